# Two commands on a fresh machine with nothing but Python 3.11:
#   make demo   - set up .venv (all backends) and run the offline demo
#   make test   - set up .venv (all backends) and run the test suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tle-installed

.PHONY: demo test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml examples/numpy_backend/pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[all,dev]" -e examples/numpy_backend
	@touch $@

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/demo.sh $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
