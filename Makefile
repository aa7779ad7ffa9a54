# make train   set up .venv (torch==2.13.0 CPU first, then the project), get the data, train the default model
# make test    set up .venv and run the tests (slow ones excluded; `make test-slow` for all)
# make lint    ruff format --check and ruff check (line length and rules: pyproject.toml)
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
TORCH ?= torch==2.13.0
# Every command reads the EPITOME CSVs from EMPATHY_DATA_DIR when it is set, else from
# data/epitome-reddit (conf/paths/default.yaml). `make data` puts them there: a link to
# ../shared/data/epitome-reddit when that folder exists beside the checkout, else a download
# (scripts/fetch_data.py, see data/README.md).
DATA := data/epitome-reddit
SHARED_DATA := ../shared/data/epitome-reddit
export WANDB_MODE ?= offline
ARGS ?=

.PHONY: setup data train prepare test test-slow lint bench clean
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

data: setup
	@if [ -n "$$EMPATHY_DATA_DIR" ]; then echo "data: EMPATHY_DATA_DIR=$$EMPATHY_DATA_DIR"; \
	elif [ -f $(DATA)/emotional-reactions-reddit.csv ]; then echo "data: $(DATA)"; \
	elif [ -f $(SHARED_DATA)/emotional-reactions-reddit.csv ]; then ln -sfn ../$(SHARED_DATA) $(DATA) && echo "data: $(DATA) -> $(SHARED_DATA)"; \
	else $(PY) scripts/fetch_data.py --dest $(DATA); fi

train: data
	$(PY) -m empathy.train $(ARGS)

prepare: data
	$(PY) -m empathy.prepare $(ARGS)

test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not slow" $(ARGS)

test-slow: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(ARGS)

lint: setup
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) .cache .pytest_cache build dist
