# llmos: the two set-up commands are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip

# torch: a CUDA build where an NVIDIA driver is present, else the CPU wheel (2.13.0).
TORCH_SPEC ?= $(if $(shell command -v nvidia-smi 2>/dev/null),torch,torch==2.13.0)

# llama-cpp-python builds from source. On x86-64 build portable AVX2 kernels: the native build
# enables ggml's AMX kernels, which crash on virtual machines that advertise AMX (seen here).
ifeq ($(shell uname -m),x86_64)
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif

export HF_HUB_OFFLINE := 1

.PHONY: run test quick load bench install install-dev tmux clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(VENV)/.stamp-all: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)"
	$(PIP) install -e ".[all]"
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
	$(BIN)/python -m pytest

## quick subset while iterating: no real model, no subprocess CLI
quick: install-dev
	$(BIN)/python -m pytest -m "not model and not cli"

## the heavy load tests: 1,000 requests from 64 clients against `llmos serve`, then 256 from 32 clients
## overloading a queue of 4 (about 3-4 minutes)
load: install-dev
	$(BIN)/python -m pytest -m load -s

bench: install
	$(BIN)/llmos bench

clean:
	rm -rf $(VENV) build dist *.egg-info
