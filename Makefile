# Two commands do everything on a fresh machine (Python 3.11):
#   make repro   create .venv from pinned versions, register the "fedlib" kernel, run `dvc repro`
#   make test    the same set-up, then the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: setup repro test bench
setup: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	$(BIN)/python -m ipykernel install --sys-prefix --name fedlib --display-name fedlib
	touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest -q

bench: setup
	pip install --quiet -r benchmarks/requirements.txt
	python benchmarks/bench_rounds.py
