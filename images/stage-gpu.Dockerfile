# The GPU stage image: CUDA vLLM (its wheel pins the CUDA torch it was built with), DeepSpeed, Ray, Polya.
# What the chart and the paper-scale example run on GPU nodes. The NVIDIA driver comes from the node
# (the NVIDIA container toolkit); the CUDA runtime libraries come with torch's wheels.
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BASE} AS build
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/polya/bin:$PATH DS_BUILD_OPS=0
RUN python3 -m venv /opt/polya
WORKDIR /src
COPY requirements/gpu.lock requirements/gpu.lock
COPY pyproject.toml ./
RUN mkdir -p platform/polya operators/polya_operator \
 && touch README.md platform/polya/__init__.py operators/polya_operator/__init__.py \
 && pip install -c requirements/gpu.lock setuptools==84.2.1 vllm==0.32.0 \
 && pip install --no-build-isolation -c requirements/gpu.lock ".[gpu,s3,gcs]" \
 && pip uninstall -y polya
COPY README.md ./
COPY platform platform
COPY operators operators
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall -y pip \
 && find /opt/polya -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
# wget: KubeRay's default readiness/liveness probes of Ray pods call it
# Triton (under vLLM and DeepSpeed) compiles small launchers with the system C compiler at run time:
# gcc and the Python headers are run-time needs here, not build leftovers.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-dev gcc libc6-dev ca-certificates libgomp1 wget \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/polya /opt/polya
ENV PATH=/opt/polya/bin:$PATH PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
WORKDIR /home/ray
CMD ["polya", "--help"]
