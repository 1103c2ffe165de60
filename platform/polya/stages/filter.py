"""Stage 2 — filtering: verify every trace, score heuristic adherence, keep the best correct trace per
(question, heuristic) (or one per question for STaR), and measure what was kept.

Outputs: ``sft.parquet`` (the SFT dataset: question, gold answer, heuristic id, completion, adherence,
correct), ``verdicts.parquet`` (every trace's status, extracted answer and adherence),
``per_heuristic.json`` (pass and keep rates per heuristic) and figures (verify counts, keep rate, Vendi).
"""
from __future__ import annotations

import json
import time

from polya import metrics
from polya.analysis.diversity import vendi_of_texts
from polya.artifacts import stage_key
from polya.selection import Candidate, select
from polya.stages import StageResult
from polya.stages.common import StageContext, begin_stage, log, run_async
from polya.verify import STATUSES, Verifier


def key(ctx: StageContext) -> str:
    f = ctx.run.spec.filtering
    mode = "star" if ctx.arm == "star" else f.mode
    slice_ = {"rm": f.rewardModel.model_dump(exclude={"replicas", "gpusPerReplica"}), "keepIncorrect": f.keepIncorrect,
              "mode": mode, "timeout": f.verifyTimeoutSeconds, "seed": ctx.run.spec.seed}
    return stage_key("filter", slice_, {"selfgen": ctx.inputs["selfgen"].key})


def _score_adherence(ctx: StageContext, texts: list[str], heuristic_ids: list[str]) -> list[float | None]:
    """Adherence scores through the reward-model app (its handle; /score over HTTP for people)."""
    from ray import serve

    from polya.serve.launch import call_with_retry, start_reward

    rm = ctx.run.spec.filtering.rewardModel
    cfg = {"kind": rm.kind, "name": rm.name}
    if rm.kind == "judge":
        from polya.models import resolve
        from polya.stages.common import engine_config

        cfg["engine"] = engine_config(ctx.run, resolve(rm.name), ctx.run.spec.selfGeneration).__dict__
    handle = start_reward(cfg, replicas=rm.replicas, gpus_per_replica=rm.gpusPerReplica, http_port=ctx.http_port)
    items = [{"text": t, "heuristic": h} for t, h in zip(texts, heuristic_ids)]
    scores: list[float | None] = []

    async def go():
        for i in range(0, len(items), 256):
            t0 = time.perf_counter()
            res = await call_with_retry(handle.score, items[i : i + 256])
            metrics.SCORER_LATENCY.labels(rm.kind).observe(time.perf_counter() - t0)
            scores.extend(res["scores"])

    try:
        run_async(go())
    finally:
        serve.delete("reward")
    return scores


def run(ctx: StageContext) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = ctx.run.spec.filtering
    mode = "star" if ctx.arm == "star" else f.mode
    art, cached = begin_stage(ctx, "filter", key(ctx))
    if cached:
        return cached
    out_dir = art.local
    rows = pq.read_table(ctx.inputs["selfgen"].local / "selfgen.parquet").to_pylist()

    with Verifier(workers=f.verifyWorkers, timeout_s=f.verifyTimeoutSeconds) as verifier:
        verdicts = verifier.verify_many([r["answer"] for r in rows], [r["completion"] for r in rows])
    counts = {s: 0 for s in STATUSES}
    for v in verdicts:
        counts[v.status] += 1
        metrics.VERIFY_TOTAL.labels("filter", v.status).inc()

    # adherence matters only where it decides something: correct traces, and incorrect ones if admitted
    need = [i for i, v in enumerate(verdicts) if v.correct or f.keepIncorrect > 0]
    adherence: list[float | None] = [None] * len(rows)
    if need and mode == "heuristic":
        scored = _score_adherence(ctx, [rows[i]["completion"] for i in need], [rows[i]["heuristic_id"] for i in need])
        for i, s in zip(need, scored):
            adherence[i] = s
    cands = [Candidate(i, r["question_id"], r["heuristic_id"], r["sample_index"], verdicts[i].correct, adherence[i])
             for i, r in enumerate(rows)]
    kept = select(cands, mode=mode, keep_incorrect=f.keepIncorrect, seed=ctx.run.spec.seed)

    pq.write_table(pa.Table.from_pylist([
        {"index": i, "question_id": r["question_id"], "heuristic_id": r["heuristic_id"],
         "sample_index": r["sample_index"], "status": verdicts[i].status, "predicted": verdicts[i].predicted,
         "adherence": adherence[i]} for i, r in enumerate(rows)]), out_dir / "verdicts.parquet")
    sft = [{"question_id": rows[i]["question_id"], "question": rows[i]["question"], "answer": rows[i]["answer"],
            "heuristic_id": rows[i]["heuristic_id"], "completion": rows[i]["completion"],
            "correct": verdicts[i].correct, "adherence": adherence[i]} for i in kept]
    schema = pa.schema([("question_id", pa.string()), ("question", pa.string()), ("answer", pa.string()),
                        ("heuristic_id", pa.string()), ("completion", pa.string()), ("correct", pa.bool_()),
                        ("adherence", pa.float64())])
    pq.write_table(pa.Table.from_pylist(sft, schema=schema), out_dir / "sft.parquet")

    per_h: dict[str, dict[str, float]] = {}
    groups: dict[str, set] = {}
    for r, v in zip(rows, verdicts):
        d = per_h.setdefault(r["heuristic_id"], {"traces": 0, "correct": 0, "kept": 0})
        d["traces"] += 1
        d["correct"] += v.correct
        groups.setdefault(r["heuristic_id"], set()).add(r["question_id"])
    for row in sft:
        per_h[row["heuristic_id"]]["kept"] += 1
    for h, d in per_h.items():
        d["pass_rate"] = d["correct"] / d["traces"]
        d["keep_rate"] = d["kept"] / max(1, len(groups[h]))
    (out_dir / "per_heuristic.json").write_text(json.dumps(per_h, indent=2, sort_keys=True))

    n_groups = sum(len(g) for g in groups.values()) if mode == "heuristic" else len({r["question_id"] for r in rows})
    vendi = vendi_of_texts([s["completion"] for s in sft]) if sft else 0.0
    figures = {
        "traces": len(rows), "kept": len(sft), "keep_rate": len(sft) / max(1, n_groups),
        "verify_rate": counts["correct"] / max(1, len(rows)), "vendi": vendi,
        **{f"verify_{s}": c for s, c in counts.items()},
    }
    metrics.VERIFY_RATE.labels("filter").set(figures["verify_rate"])
    metrics.FILTER_KEEP_RATE.labels(ctx.arm).set(figures["keep_rate"])
    metrics.VENDI.labels(ctx.arm).set(vendi)
    if counts["unparsable"] or counts["timeout"] or counts["error"]:
        log.info("filter: %d unparsable, %d timed out, %d errors (counted, not fatal)",
                 counts["unparsable"], counts["timeout"], counts["error"])
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
