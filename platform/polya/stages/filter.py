"""Stage 2 — filtering: verify every trace, score heuristic adherence, keep the best correct trace per
(question, heuristic) (or one per question for STaR; the best incorrect ones with ``keep: incorrect``, the
paper's ablation), and measure what was kept.

Outputs: ``sft.parquet`` (the SFT dataset: question, gold answer, heuristic id, completion, adherence,
correct), ``verdicts.parquet`` (every trace's status, extracted answer and adherence),
``per_heuristic.json`` (pass and keep rates per heuristic) and figures (verify counts, keep rate, Vendi).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from polya import metrics
from polya.analysis.diversity import vendi_of_texts
from polya.recipe import STAR_SELECTION, Stage
from polya.reward import ScorerConfig
from polya.selection import Candidate, select
from polya.stages.common import StageContext, StageResult, log, run_async
from polya.verify import STATUSES, Verifier

SFT_SCHEMA = (("question_id", "string"), ("question", "string"), ("answer", "string"), ("heuristic_id", "string"),
              ("completion", "string"), ("correct", "bool_"), ("adherence", "float64"))


def _score_adherence(ctx: StageContext, texts: list[str], heuristic_ids: list[str]) -> list[float | None]:
    """Adherence scores through the reward-model app (its handle; /score over HTTP for people)."""
    from ray import serve

    from polya.serve.launch import call_with_retry, start_reward

    rm = ctx.settings.rewardModel
    cfg = ScorerConfig.from_spec(rm, ctx.run.spec.model, ctx.run.spec.seed)
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


def _per_heuristic(rows: list[dict], verdicts, sft: list[dict]) -> tuple[dict[str, dict[str, float]], dict[str, set]]:
    """Pass and keep rates per heuristic, and the questions each heuristic was asked on."""
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
    return per_h, groups


def _write_tables(out_dir: Path, rows: list[dict], verdicts, adherence: list, kept: list[int]) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([
        {"index": i, "question_id": r["question_id"], "heuristic_id": r["heuristic_id"],
         "sample_index": r["sample_index"], "status": verdicts[i].status, "predicted": verdicts[i].predicted,
         "adherence": adherence[i]} for i, r in enumerate(rows)]), out_dir / "verdicts.parquet")
    sft = [{"question_id": rows[i]["question_id"], "question": rows[i]["question"], "answer": rows[i]["answer"],
            "heuristic_id": rows[i]["heuristic_id"], "completion": rows[i]["completion"],
            "correct": verdicts[i].correct, "adherence": adherence[i]} for i in kept]
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in SFT_SCHEMA])
    pq.write_table(pa.Table.from_pylist(sft, schema=schema), out_dir / "sft.parquet")
    return sft


def _verify(f, rows: list[dict]) -> tuple[list, dict[str, int]]:
    with Verifier(workers=f.verifyWorkers, timeout_s=f.verifyTimeoutSeconds) as verifier:
        verdicts = verifier.verify_many([r["answer"] for r in rows], [r["completion"] for r in rows])
    counts = {s: 0 for s in STATUSES}
    for v in verdicts:
        counts[v.status] += 1
        metrics.VERIFY_TOTAL.labels(Stage.FILTER, v.status).inc()
    if counts["unparsable"] or counts["timeout"] or counts["error"]:
        log.info("filter: %d unparsable, %d timed out, %d errors (counted, not fatal)",
                 counts["unparsable"], counts["timeout"], counts["error"])
    return verdicts, counts


def needs_adherence(correct: list[bool], keep: str, keep_incorrect: float) -> list[int]:
    """The traces whose adherence the reward model must score: only where it decides something — the verdict
    kept (`filtering.keep`: correct ones, or incorrect ones for the incorrect-only ablation), plus incorrect
    traces where some are admitted beside the correct ones (`keepIncorrect` > 0)."""
    if keep == "incorrect":
        return [i for i, ok in enumerate(correct) if not ok]
    return [i for i, ok in enumerate(correct) if ok or keep_incorrect > 0]


def run(ctx: StageContext) -> StageResult:
    import pyarrow.parquet as pq

    f = ctx.settings
    mode = STAR_SELECTION if ctx.arm.heuristic_free else f.mode
    art, cached = ctx.begin()
    if cached:
        return cached
    rows = pq.read_table(ctx.inputs[Stage.SELFGEN].fetch() / "selfgen.parquet").to_pylist()
    verdicts, counts = _verify(f, rows)

    need = needs_adherence([v.correct for v in verdicts], f.keep, f.keepIncorrect)
    adherence: list[float | None] = [None] * len(rows)
    if need and mode != STAR_SELECTION:
        scored = _score_adherence(ctx, [rows[i]["completion"] for i in need], [rows[i]["heuristic_id"] for i in need])
        for i, s in zip(need, scored):
            adherence[i] = s
    cands = [Candidate(i, r["question_id"], r["heuristic_id"], r["sample_index"], verdicts[i].correct, adherence[i])
             for i, r in enumerate(rows)]
    kept = select(cands, mode=mode, keep_incorrect=f.keepIncorrect, seed=ctx.run.spec.seed, keep=f.keep,
                  incorrect_per_question=f.incorrectPerQuestion)
    sft = _write_tables(art.local, rows, verdicts, adherence, kept)
    per_h, groups = _per_heuristic(rows, verdicts, sft)
    (art.local / "per_heuristic.json").write_text(json.dumps(per_h, indent=2, sort_keys=True))

    n_groups = len({r["question_id"] for r in rows}) if mode == STAR_SELECTION else sum(len(g) for g in groups.values())
    vendi = vendi_of_texts([s["completion"] for s in sft]) if sft else 0.0
    figures = {
        "traces": len(rows), "kept": len(sft), "keep_rate": len(sft) / max(1, n_groups),
        "verify_rate": counts["correct"] / max(1, len(rows)), "vendi": vendi,
        **{f"verify_{s}": c for s, c in counts.items()},
    }
    metrics.VERIFY_RATE.labels(Stage.FILTER).set(figures["verify_rate"])
    metrics.FILTER_KEEP_RATE.labels(ctx.arm.name).set(figures["keep_rate"])
    metrics.VENDI.labels(ctx.arm.name).set(vendi)
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
