"""Shared fixtures. Tests never download: tiny models are built offline, SmolLM2 comes from a PyPI package."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "k8s" / "examples"
SHARED = Path(os.environ.get("POLYA_SHARED", REPO.parent / "shared"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


#: Serve's HTTP port for this test session: a free one, so parallel runs on one machine do not collide
SERVE_PORT = _free_port()


@pytest.fixture
def local_doc() -> dict:
    """The embedded example as a fresh, mutable dict."""
    return copy.deepcopy(yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text()))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from polya.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    data = SHARED / "data"
    if not data.is_dir():
        pytest.skip(f"benchmark files not found at {data} (set POLYA_SHARED); they are not part of the repo")
    return data


@pytest.fixture(scope="session")
def ray_session():
    """One real local Ray (+ Serve) for the whole session: vLLM-cpu replicas and reward models live on it."""
    import ray
    from ray import serve

    from polya.serve.launch import ensure_ray, ensure_serve

    ensure_ray(num_cpus=2)
    ensure_serve(http_port=SERVE_PORT)  # the first start fixes the port for the whole session
    yield ray
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    """Kubeconfig of a real local API server with KubeRay's CRDs and Polya's chart installed by `helm install`."""
    import kube as K
    from kubernetes import client, config

    reason = K.missing_reason()
    if reason:
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("kube")
    kubeconfig = K.start(state)
    try:
        api = config.new_client_from_config(str(kubeconfig))
        K.install_crds(api, polya=False)  # KubeRay is a prerequisite the chart does not install
        K.install_chart(api, kubeconfig)  # Polya's CRD (the CEL-free copy on 1.20), RBAC, operator, dashboard
        yield kubeconfig
    finally:
        K.stop(state)


def build_image(target: str) -> str:
    """The image `make images` builds for ``target`` (tools/images/build.sh: podman, cached by content key);
    returns its local tag."""
    import subprocess

    out = subprocess.run(["bash", str(REPO / "tools/images/build.sh"), target], capture_output=True, text=True,
                         timeout=3600)
    assert out.returncode == 0, out.stderr[-4000:]
    built, tag, name, _size, _unit = out.stdout.strip().splitlines()[-1].split()
    assert built == target and name.startswith("ghcr.io/polya-dev/")
    return tag
