"""Stage 1 — self-generation: every (question, heuristic) × samplesPerHeuristic through the rollout app.

Output: ``selfgen.parquet`` with one row per completion (question id, heuristic id, sample index, the
question and gold answer, prompt, completion, token counts, finish reason) and ``questions.json`` (the
dataset load report). The STaR arm uses one heuristic-free prompt per question (heuristic id ``none``). The
traces come from `selfGeneration.model` where one is set (distillation from another model; its own tokenizer,
chat template and context length), else from the run's model.
"""
from __future__ import annotations

import json

from polya import metrics
from polya.data import load_questions
from polya.engines.base import Sampling
from polya.heuristics import render_prompt, select
from polya.models import load_tokenizer
from polya.stages.common import StageContext, StageResult, generate_all, log, rollout_service, run_async

NO_HEURISTIC = "none"


def run(ctx: StageContext) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    spec = ctx.run.spec
    gen = ctx.settings
    art, cached = ctx.begin()
    if cached:
        return cached
    out_dir = art.local

    questions, report = load_questions(spec.dataset)
    if report.rejected:
        log.warning("dataset: %s", report.summary())
    heuristics = [None] if ctx.arm.heuristic_free else select(spec.heuristics.count, spec.heuristics.names)
    writer = spec.generator()  # the run's model, or selfGeneration.model (the distillation baseline's teacher)
    tok = load_tokenizer(writer.name, writer)
    jobs = [(q, h) for q in questions for h in heuristics]
    prompts = [render_prompt(tok, q.question, h, few_shot=spec.heuristics.fewShot) for q, h in jobs]
    sampling = Sampling(temperature=gen.temperature, top_p=gen.topP, max_tokens=gen.maxTokens,
                        n=gen.samplesPerHeuristic, seed=spec.seed, logprobs=False)  # unused: ~15% faster
    cfg = ctx.engine(gen, writer.name, served_name=writer.name, model=writer)
    with rollout_service(ctx, cfg, gen, name=f"{ctx.stage.name}-{ctx.arm.name}") as handle:
        groups, wall = run_async(generate_all(handle, prompts, sampling, desc="self-generation",
                                              progress=ctx.progress, concurrency=2 * gen.replicas))

    rows = []
    for (q, h), prompt, group in zip(jobs, prompts, groups):
        for i, c in enumerate(group):
            rows.append({
                "question_id": q.id, "heuristic_id": h.id if h else NO_HEURISTIC, "sample_index": i,
                "question": q.question, "answer": q.answer, "prompt": prompt, "completion": c["text"],
                "prompt_tokens": c["prompt_tokens"], "completion_tokens": len(c["token_ids"]),
                "finish_reason": c["finish_reason"],
            })
    pq.write_table(pa.Table.from_pylist(rows), out_dir / "selfgen.parquet")
    (out_dir / "questions.json").write_text(json.dumps(
        {"summary": report.summary(), "rows": report.rows, "kept": report.kept, "bad": report.bad,
         "examples": report.examples}, indent=2))
    tokens = sum(r["completion_tokens"] for r in rows)
    figures = {
        "questions": len(questions), "heuristics": len(heuristics), "completions": len(rows),
        "tokens": tokens, "tokens_per_s": tokens / wall if wall else 0.0,
        "truncated_ratio": sum(r["finish_reason"] == "length" for r in rows) / max(1, len(rows)),
        "bad_rows": report.rejected,
    }
    metrics.TOKENS_GENERATED.labels(ctx.stage.name).inc(tokens)
    metrics.TOKENS_PER_SECOND.labels(ctx.stage.name).set(figures["tokens_per_s"])
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
