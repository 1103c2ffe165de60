"""Shared fixtures. Tests never download: tiny models are built offline, SmolLM2 comes from a PyPI package."""
from __future__ import annotations

import copy
import json
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


def tiny_run(model: Path, storage: Path, grpo_lr: float = 1e-3, grpo_steps: int = 2) -> dict:
    """Every stage on a tiny model in seconds (the pipeline and storage tests)."""
    return {
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "tiny-e2e"},
        "spec": {
            "model": {"name": str(model), "dtype": "float32", "maxModelLen": 1024},
            "dataset": {"source": "builtin:arithmetic", "limit": 3, "difficulty": [1]},
            "heuristics": {"count": 1, "fewShot": False},
            "storage": {"uri": str(storage)},
            "selfGeneration": {"samplesPerHeuristic": 2, "maxTokens": 8},
            # a random model is never right: admit its incorrect traces so mid-training has data
            "filtering": {"keepIncorrect": 1.0, "verifyWorkers": 1},
            "midTraining": {"epochs": 1, "batchSize": 2, "workers": 1, "zeroStage": 0, "precision": "fp32",
                            "learningRate": 1e-3},
            "grpo": {"steps": grpo_steps, "promptsPerStep": 2, "groupSize": 2, "workers": 1, "zeroStage": 0,
                     "precision": "fp32", "klCoef": 0.0, "learningRate": grpo_lr, "checkpointEvery": 1,
                     "weightSync": "objectStore",  # test_grpo.py covers the default (collective) path
                     "rollout": {"maxTokens": 8}},
            "evaluation": {"samples": 2, "k": [1, 2], "maxTokens": 8,
                           "benchmarks": [{"name": "arith", "source": "builtin:arithmetic", "seed": 7, "limit": 2}]},
        },
    }


def events(output: str) -> list[dict]:
    """The JSON event lines `polya run` prints when not on a terminal."""
    return [json.loads(line) for line in output.splitlines() if line.startswith("{\"event\"")]


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

    ensure_ray()  # the cores + 1 logical CPUs: 2 learners beside token-CPU replicas on a 2-core machine
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
