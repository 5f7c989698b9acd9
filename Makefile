# `make tune` and `make test` create .venv on first use (Python 3.11) and install what they need.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip install -q -c constraints.txt
ARGS ?=

.PHONY: tune test test-fast lint clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

# the main job needs only the PyTorch back end
$(VENV)/.installed-pytorch: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[pytorch]'
	touch $@

# the tests need every back end and the NLP model
$(VENV)/.installed-all: pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e '.[all,dev]'
	touch $@ $(VENV)/.installed-pytorch

tune: $(VENV)/.installed-pytorch
	$(PY) tune.py $(ARGS)

test: $(VENV)/.installed-all
	$(PY) -m pytest -q $(PYTEST_ARGS)

# skips the slow end-to-end runs (the hard model takes ~5 min)
test-fast: $(VENV)/.installed-all
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(VENV)/.installed-all
	$(VENV)/bin/ruff check lpot_research tests scripts tune.py

clean:
	rm -rf $(VENV) outputs multirun lpot_outputs
