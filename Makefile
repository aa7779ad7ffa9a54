# make train   set up .venv (torch==2.13.0 CPU first, then the project) and train the default model
# make test    set up .venv and run the tests (slow ones excluded; `make test-slow` for all)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH ?= torch==2.13.0
# The EPITOME CSVs: EMPATHY_DATA_DIR if set, else ../shared/data/epitome-reddit when present,
# else data/epitome-reddit (see data/README.md to fetch them).
EMPATHY_DATA_DIR ?= $(if $(wildcard ../shared/data/epitome-reddit/*.csv),$(abspath ../shared/data/epitome-reddit),$(abspath data/epitome-reddit))
export EMPATHY_DATA_DIR
export WANDB_MODE ?= offline
ARGS ?=

.PHONY: setup train prepare test test-slow lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

train: setup
	$(PY) -m empathy.train $(ARGS)

prepare: setup
	for m in ER IP EX; do $(PY) -m empathy.prepare mechanism=$$m || exit 1; done

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(ARGS)

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff check empathy tests scripts

clean:
	rm -rf $(VENV) .cache .pytest_cache
