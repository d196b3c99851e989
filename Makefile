# mdxrd: make dataset (default dataset), make test (test suite), make docs (the documentation site).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CORES ?= 2
# torch as pip finds it: from PyPI on Linux the CUDA build; the CPU build with
# make install TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=

.PHONY: install dataset test docs dry-run clean

$(BIN)/mdxrd: pyproject.toml envs/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0 $(TORCH_PIP_ARGS)
	$(BIN)/pip install -q -c envs/constraints.txt -e '.[test,sevennet,docs]'
	touch $@

install: $(BIN)/mdxrd

dataset: install
	$(BIN)/snakemake --profile profiles/local --cores $(CORES)

dry-run: install
	$(BIN)/snakemake --profile profiles/local -n

test: install
	$(BIN)/python -m pytest tests

# warnings are errors: a broken link, a docstring that does not render, a page not in the table of contents
docs: install
	$(BIN)/sphinx-build -W --keep-going -q -b html docs docs/_build/html

clean:
	rm -rf results logs benchmarks/results .snakemake docs/_build docs/_generated
