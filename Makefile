# Two commands for a newcomer: `make demo` and `make test`. Both create .venv when
# missing and (re)install the project only when setup.cfg or pyproject.toml changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install demo test bench mutation clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,viz,export]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m retrieval.cli.demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) -m benchmarks.run_all

# Not part of `test` (minutes to hours): mutants of the modules setup.cfg [mutmut] lists, run against
# their tests; prints the survivors (docs/testing.md). MUTATION_TIMEOUT bounds the run (seconds).
MUTATION_TIMEOUT ?= 3600
mutation: $(STAMP)
	OMP_NUM_THREADS=1 timeout $(MUTATION_TIMEOUT) $(VENV)/bin/mutmut run --max-children $(shell nproc 2>/dev/null || echo 2); \
		status=$$?; $(VENV)/bin/mutmut results; exit $$status

clean:
	rm -rf $(VENV) build *.egg-info runs/demo
