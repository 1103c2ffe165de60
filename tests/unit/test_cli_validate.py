"""`polya validate` as a user runs it: exit code and messages naming the field path."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from conftest import EXAMPLES, REPO


def polya(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polya.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_examples_validate():
    res = polya("validate", str(EXAMPLES / "polya-run.yaml"), str(EXAMPLES / "polya-run-local.yaml"))
    assert res.returncode == 0, res.stderr
    assert "llama3b-polya-n16" in res.stdout and "16 heuristics" in res.stdout
    assert "smollm2-arithmetic-n4" in res.stdout and "4 heuristics" in res.stdout


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["grpo"].update(grupSize=4), "spec.grpo.grupSize: unknown field"),
        (lambda s: s["heuristics"].update(count=0), "spec.heuristics.count:"),
        (lambda s: s["heuristics"].update(count=65), "spec.heuristics.count:"),
        (lambda s: s["grpo"].update(groupSize=1), "spec.grpo.groupSize:"),
        (lambda s: s["evaluation"].update(k=[1, 64]), "spec.evaluation.k:"),
        (lambda s: s["grpo"].update(learningRate=-1e-6), "spec.grpo.learningRate:"),
        (lambda s: s["storage"].update(uri="ftp://x/y"), "spec.storage.uri: unsupported storage scheme"),
        (lambda s: s.pop("model"), "spec.model: required field is missing"),
    ],
)
def test_validate_refuses(tmp_path, local_doc, mutate, expected):
    mutate(local_doc["spec"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(local_doc))
    res = polya("validate", str(path))
    assert res.returncode != 0
    assert expected in res.stderr, res.stderr


def test_validate_unreadable_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    res = polya("validate", str(path))
    assert res.returncode == 1 and "cannot read" in res.stderr


def test_run_skeleton_plans_stages(tmp_path):
    res = polya("run", "--dry-run", str(EXAMPLES / "polya-run-local.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    for stage in ("selfgen", "filter", "midtrain", "grpo", "evaluate"):
        assert stage in res.stderr
