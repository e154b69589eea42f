# `make run`: the whole job on the embedded sample. `make test`: the test suite.
# Both bootstrap .venv from scratch first (python3 >= 3.10 with venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/sample
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv run test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[gcp,test]'
	touch $@

run: venv
	$(PY) -m beam_jobs.pipeline --input_dir=data/sample --output_dir=$(OUT)/data --overwrite

test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest tests

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/prep.py

clean:
	rm -rf $(OUT)
