"""`polya sweep` end to end on a tiny model: 2 arms x 2 seeds run one after another, every child in its own run
folder, stages whose inputs are equal computed once (the second arm's children reuse the first's stages of the
same seed and recompute only what the arm changes), and the sweep report across children."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, events, tiny_run

pytestmark = pytest.mark.slow

CHILDREN = ["tiny-lr-a-s0", "tiny-lr-b-s0", "tiny-lr-a-s1", "tiny-lr-b-s1"]  # seed-major
STEPS = ["base/evaluate", "polya/selfgen", "polya/filter", "polya/midtrain", "polya-sft/evaluate", "polya/grpo",
         "polya/evaluate"]


def by_child(evs: list[dict]) -> dict[str, dict[str, bool]]:
    """child -> {step: cached} from the event stream."""
    out: dict[str, dict[str, bool]] = {}
    current = None
    for e in evs:
        if e["event"] == "child_start":
            current = out.setdefault(e["child"], {})
        elif e["event"] == "stage_done":
            current[e["step"]] = e["cached"]
    return out


def test_a_tiny_sweep_shares_equal_stages_and_reports_across_children(tiny_model, tmp_path):
    storage = tmp_path / "sweep"
    template = tiny_run(tiny_model, storage, grpo_steps=1)["spec"]
    # the transformers engine: what this test checks is the sweep (children, sharing, report), not the rollout
    # engine, and a vLLM engine start in each of its 14 stages that generate took most of its 11 minutes; vLLM
    # runs every stage in test_pipeline.py
    for block in (template["selfGeneration"], template["grpo"]["rollout"], template["evaluation"]):
        block["engine"] = "transformers"
    doc = {"apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep", "metadata": {"name": "tiny"},
           "spec": {"template": template, "seeds": [0, 1], "bootstrap": 200,
                    "arms": [{"name": "lr-a", "set": {"grpo.learningRate": 1e-3}},
                             {"name": "lr-b", "set": {"grpo.learningRate": 2e-3}}]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = dict(os.environ, RAY_AUTH_MODE="disabled", VLLM_CPU_KVCACHE_SPACE="1")
    proc = subprocess.run([sys.executable, "-m", "polya.cli", "sweep", str(path)], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-4000:]
    evs = events(proc.stdout)
    assert [e["child"] for e in evs if e["event"] == "child_start"] == CHILDREN
    ran = by_child(evs)
    assert list(ran["tiny-lr-a-s0"]) == STEPS and not any(ran["tiny-lr-a-s0"].values())
    assert not any(ran["tiny-lr-a-s1"].values())  # another seed: nothing to share with seed 0
    for child in ("tiny-lr-b-s0", "tiny-lr-b-s1"):  # the arm changes GRPO only: the rest is its seed's
        assert ran[child] == {**dict.fromkeys(STEPS[:5], True), "polya/grpo": False, "polya/evaluate": False}, child
    # one content-addressed store: per seed one of each shared stage, one GRPO per child
    assert len(list((storage / "selfgen").iterdir())) == 2 and len(list((storage / "grpo").iterdir())) == 4
    for child in CHILDREN:  # each child's own results and report
        assert len(list((storage / "runs" / child / "results").glob("*.json"))) == len(STEPS), child
        assert (storage / "runs" / child / "report" / "report.md").stat().st_size > 0
    assert evs[-1]["event"] == "sweep_done" and evs[-1]["phase"] == "Succeeded" and evs[-1]["succeeded"] == 4

    report = json.loads((storage / "sweep-report" / "sweep.json").read_text())
    rows = {(r["arm"], r["model"]): r for r in report["rows"]}
    # the base model and the mid-trained one are the same artifacts in both arms: one row each
    assert rows[("lr-a", "base")]["also"] == ["lr-b"] and ("lr-b", "base") not in rows
    assert rows[("lr-a", "polya-sft")]["also"] == ["lr-b"]
    assert rows[("lr-a", "polya")]["also"] == [] and ("lr-b", "polya") in rows
    for row in report["rows"]:
        assert row["seeds"] == [0, 1] and set(row["pass_at_k"]) == {"1", "2"}
        for iv in row["pass_at_k"].values():
            assert iv["low"] <= iv["mean"] <= iv["high"]
    # what filtering kept, over seeds, read from each child's results (the filter is shared by both arms)
    (data,) = report["data"]
    assert data["label"] == "lr-a/lr-b: Polya (SFT + GRPO)" and data["figures"]["traces"]["n"] == 2
    assert data["figures"]["traces"]["mean"] == 6  # 3 questions x 1 heuristic x 2 samples
    md = (storage / "sweep-report" / "sweep.md").read_text()
    assert "4/4 children have results." in md and "| lr-a/lr-b: base model | 2 |" in md
    assert (storage / "sweep-report" / "sweep_passk.png").stat().st_size > 0
