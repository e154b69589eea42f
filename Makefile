# `make run`: the whole job on the embedded sample. `make test`: the test suite.
# Both bootstrap .venv from scratch first (python3 >= 3.10 with venv).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out/sample
# pytest-xdist workers for `make test` ("auto": one per core; each holds a TensorFlow).
TEST_WORKERS ?= 2
# A viewing history from the sample: user 1's first ten movies, oldest first.
HISTORY ?= 273,290,403,164,339,396,282,26,66,285

.PHONY: venv run test lint bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[trainer,gcp,test]'
	touch $@

# Beam job -> training on 2 virtual CPU replicas -> metrics -> export -> one recommendation.
# A second `make run` resumes the finished model (nothing retrained); `make clean` starts afresh.
run: venv
	$(PY) -m beam_jobs.pipeline --input_dir=data/sample --output_dir=$(OUT)/data --overwrite
	$(PY) -m trainer.train --data_dir=$(OUT)/data --model_dir=$(OUT)/model \
		--virtual_cpu_devices=2 --epochs=5 --global_batch_size=1024
	$(PY) -m trainer.recommend --model_dir=$(OUT)/model --history=$(HISTORY) --k=10

# The suite in TEST_WORKERS processes (pytest-xdist), whole test files each, slow files first
# (tests/conftest.py): most tests wait on subprocesses or one core, so 2 workers fill 2 cores.
test: venv
	$(PY) -m ruff check .
	$(PY) -m pytest tests --durations=25 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

lint: venv
	$(PY) -m ruff check .

bench: venv
	$(PY) bench/prep.py

clean:
	rm -rf $(OUT)
