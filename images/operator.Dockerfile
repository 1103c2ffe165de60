# The operator image: kopf + the Kubernetes client + Polya's spec models + s3fs (it reads stage results and
# checks for complete artifacts in s3:// storage); no torch, no Ray. Non-root.
#   make images            (podman or docker; see tools/images/build.sh)
# BASE may carry a digest: --build-arg BASE=docker.io/library/debian:bookworm-slim@sha256:...
ARG BASE=docker.io/library/debian:bookworm-slim

FROM ${BASE} AS build
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_CERT
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PATH=/opt/polya/bin:$PATH
RUN python3 -m venv /opt/polya
WORKDIR /src
COPY requirements/cpu.lock requirements/cpu.lock
COPY pyproject.toml ./
# dependencies first (a layer that changes only with pyproject.toml or the lock), then the sources
RUN mkdir -p platform/polya operators/polya_operator \
 && touch README.md platform/polya/__init__.py operators/polya_operator/__init__.py \
 && pip install -c requirements/cpu.lock setuptools==78.1.1 \
 && pip install --no-build-isolation -c requirements/cpu.lock ".[operator,s3]" \
 && pip uninstall -y polya
COPY README.md ./
COPY platform platform
COPY operators operators
RUN pip install --no-deps --no-build-isolation . \
 && pip uninstall -y pip setuptools \
 && find /opt/polya -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/polya /opt/polya
ENV PATH=/opt/polya/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
ENTRYPOINT ["polya-operator"]
