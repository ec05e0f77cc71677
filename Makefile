# Two commands on a fresh machine with nothing but Python 3.11:
#   make demo   - set up .venv (all backends) and run the offline demo
#   make test   - set up .venv (all backends) and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tle-installed

.PHONY: demo test test-studies check setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml examples/numpy_backend/pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all,dev]" -e examples/numpy_backend
	@touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh $(ARGS)

# Two pytest workers, a test file each at a time (module fixtures stay in one process), each with half the
# cores: one process alone keeps 2 cores only ~55 % busy (waits on subprocesses, stores, servers).
TEST_THREADS ?= $(shell $(PYTHON) -c 'import os; print(max(1, (os.cpu_count() or 2) // 2))')

# The structure: the core's layers (import-linter, pyproject's [tool.importlinter]), the hook contract and the core
# type-checked (pyright, [tool.pyright]), no unused or undefined names (ruff F).
check: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pyright
	$(BIN)/ruff check --select F,E9 core plugins tests examples benchmarks

# Everything, the study-sized checks (tests/conftest.py: STUDY) included, but the longest (STUDIES_ONLY, marked long):
# what CI runs (.ci/run), inside its 30 minutes; the 30 slowest tests' times at the end.
test: check
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -n 2 --dist loadfile -m "not long" --durations=30

# Only the study-sized checks, the long ones included: about 10 minutes on 2 cores.
test-studies: $(STAMP)
	OMP_NUM_THREADS=$(TEST_THREADS) $(BIN)/python -m pytest -n 2 --dist loadfile -m study

clean:
	rm -rf $(VENV) build *.egg-info
