# llmos: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

# torch: a CUDA build where an NVIDIA driver is present, else the CPU wheel (2.13.0).
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch<=2.14.1,torch==2.13.0)

# llama-cpp-python builds from source. On x86-64 its CPU kernels are portable AVX2 ones: the native
# build enables ggml's AMX kernels, which crash on virtual machines that advertise AMX (seen here).
# Where the CUDA toolkit's nvcc is found and an NVIDIA GPU answers (`nvidia-smi -L`) it also builds
# the CUDA kernels, for this machine's GPUs; a toolkit without a GPU (a CPU CI machine) builds CPU
# kernels only. LLMOS_CUDA=1 forces the CUDA build (with CUDA_ARCH=90 for a Hopper, say, as no GPU is
# there to detect), LLMOS_CUDA=0 prevents it; CMAKE_ARGS overrides everything.
ifeq ($(shell uname -m),x86_64)
LLAMA_CPU_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif
FOUND_NVCC := $(or $(shell command -v nvcc 2>/dev/null),$(wildcard /usr/local/cuda/bin/nvcc))
FOUND_GPU  := $(shell nvidia-smi -L 2>/dev/null | grep -m1 GPU)
LLMOS_CUDA ?= $(if $(and $(FOUND_NVCC),$(FOUND_GPU)),1,0)
NVCC       := $(if $(filter 1,$(LLMOS_CUDA)),$(or $(FOUND_NVCC),nvcc))
CUDA_ARCH  ?= native
ifneq ($(NVCC),)
export CUDACXX ?= $(NVCC)
export CMAKE_ARGS ?= $(LLAMA_CPU_ARGS) -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=$(CUDA_ARCH) -DLLAVA_BUILD=OFF
# pip's wheel cache ignores CMAKE_ARGS: never take a CPU-only wheel built earlier on this machine
LLAMA_PIP_FLAGS := --no-cache-dir --force-reinstall --no-deps
else ifneq ($(LLAMA_CPU_ARGS),)
export CMAKE_ARGS ?= $(LLAMA_CPU_ARGS)
endif

export HF_HUB_OFFLINE := 1

.PHONY: run test quick load bench gpu-check cmake-args install install-dev tmux clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(VENV)/.stamp-all: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[all]"
	$(if $(NVCC),$(PIP) install $(LLAMA_PIP_FLAGS) "llama-cpp-python>=0.3.16")
	touch $@

$(VENV)/.stamp-dev: pyproject.toml $(VENV)/.stamp-all
	$(PIP) install -e ".[all,dev]"
	touch $@

install: $(VENV)/.stamp-all
install-dev: $(VENV)/.stamp-dev

## make run: venv, install, open the llmos shell on the embedded model (docs/shell.md)
run: install
	$(BIN)/llmos shell

## tmux: tests/test_shell_tmux.py drives `llmos shell` in a real terminal. Installed with apt-get when
## make runs as root on a Debian/Ubuntu machine (CI); otherwise install it yourself first.
tmux:
	@command -v tmux >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tmux; \
	  else \
	    echo "make test needs tmux: install it (apt-get install tmux, dnf install tmux, brew install tmux)" >&2; \
	    exit 1; \
	  fi; }

## make test: install with the dev extras and tmux, and run the whole suite
test: install-dev tmux
	$(BIN)/python -m pytest --durations=25

## quick subset while iterating: no real model, no subprocess CLI
quick: install-dev
	$(BIN)/python -m pytest -m "not model and not cli"

## the heavy load tests: 1,000 requests from 64 clients against `llmos serve`, then 256 from 32 clients
## overloading a queue of 4 (about 3-4 minutes)
load: install-dev
	$(BIN)/python -m pytest -m load -s

bench: install
	$(BIN)/llmos bench

## gpu-check: on a machine with an NVIDIA GPU, the CUDA paths end to end (torch driver, mixed LoRA
## adapters, llama.cpp offload) and B1a/B2/B2b/B4 on the GPU; what it checks: benchmarks/gpu_check.py
gpu-check: install
	$(BIN)/python -m llmos.benchmarks.gpu_check $(GPU_CHECK_ARGS)

## the CMake flags llama-cpp-python is built with here
cmake-args:
	@echo "$(CMAKE_ARGS)"

clean:
	rm -rf $(VENV) build dist *.egg-info
