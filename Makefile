# mdxrd: make dataset (default dataset), make test (test suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: install dataset test dry-run clean

$(BIN)/mdxrd: pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c envs/constraints.txt -e '.[test,sevennet]'
	touch $@

install: $(BIN)/mdxrd

dataset: install
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

dry-run: install
	$(BIN)/snakemake --profile profiles/local -n

test: install
	$(BIN)/python -m pytest tests

clean:
	rm -rf results logs benchmarks/results .snakemake
