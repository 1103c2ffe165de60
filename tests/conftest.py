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
