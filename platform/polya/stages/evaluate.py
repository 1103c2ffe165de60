"""Stage 5 — evaluation: `samples` completions per problem, unbiased pass@k for every k, composition.

The model is the arm's latest model artifact (``ctx.inputs["model"]``: a folder with ``model/``), or
the base model for the ``base`` arm. Outputs: ``eval.json``, ``eval.md`` (per-benchmark table and
average), ``passk.png`` (pass@k against k) and ``samples.parquet`` (every completion and its verdict).
"""
from __future__ import annotations

import json

from polya import metrics
from polya.analysis.composition import analyse
from polya.analysis.passk import mean_pass_at_k
from polya.analysis.plots import plot_pass_at_k
from polya.artifacts import stage_key
from polya.data import load_questions
from polya.engines.base import Sampling
from polya.heuristics import render_prompt, select
from polya.models import resolve
from polya.stages import StageResult
from polya.stages.common import StageContext, begin_stage, engine_config, generate_all, log, rollout_service, run_async
from polya.verify import Verifier

MAX_COMPOSITION_CHAINS = 256


def model_ref(ctx: StageContext) -> tuple[str, str]:
    """(path to load, identity for the key)."""
    if "model" in ctx.inputs:
        art = ctx.inputs["model"]
        return str(art.local / "model"), f"{art.stage}:{art.key}"
    return resolve(ctx.run.spec.model.name), ctx.run.spec.model.name


def key(ctx: StageContext) -> str:
    e = ctx.run.spec.evaluation
    slice_ = {"eval": e.model_dump(exclude={"serve", "replicas", "gpusPerReplica"}),
              "fewShot": ctx.run.spec.heuristics.fewShot, "heuristics": ctx.run.spec.heuristics.selected_ids(),
              "seed": ctx.run.spec.seed}
    return stage_key("evaluate", slice_, {"model": model_ref(ctx)[1]})


def markdown_table(results: dict[str, dict[int, float]], ks: list[int]) -> str:
    head = "| benchmark | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    sep = "|---|" + "---:|" * len(ks)
    lines = [head, sep]
    for name, row in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[k]:.2f}" for k in ks) + " |")
    return "\n".join(lines)


async def _judge_composition(ctx: StageContext, chains: list[str], heuristics):
    """Composition with the run's judge model (filtering.rewardModel, kind judge) on a local engine."""
    from polya.analysis.composition import analyse_with_judge
    from polya.engines.base import create_engine

    rm = ctx.run.spec.filtering.rewardModel
    engine = create_engine(engine_config(ctx.run, resolve(rm.name), ctx.run.spec.selfGeneration))
    try:
        return await analyse_with_judge(chains, heuristics, engine)
    finally:
        await engine.close()


def run(ctx: StageContext) -> StageResult:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from transformers import AutoTokenizer

    spec = ctx.run.spec
    ev = spec.evaluation
    art, cached = begin_stage(ctx, "evaluate", key(ctx))
    if cached:
        return cached
    out_dir = art.local
    model_path, model_id = model_ref(ctx)
    tok = AutoTokenizer.from_pretrained(model_path)
    sampling = Sampling(temperature=ev.temperature, top_p=ev.topP, max_tokens=ev.maxTokens, n=ev.samples,
                        seed=spec.seed + 1, logprobs=False)  # unused: ~15% faster
    block = spec.grpo.rollout.model_copy(update={"replicas": ev.replicas, "gpusPerReplica": ev.gpusPerReplica})
    cfg = engine_config(ctx.run, model_path, block, served_name=model_id)

    results: dict[str, dict[int, float]] = {}
    reports: dict[str, dict] = {}
    sample_rows: list[dict] = []
    chains: list[str] = []
    with rollout_service(ctx, cfg, ev.replicas, ev.gpusPerReplica, name=f"eval-{ctx.arm}") as handle, \
            Verifier(workers=spec.filtering.verifyWorkers, timeout_s=spec.filtering.verifyTimeoutSeconds) as verifier:
        for bench in ev.benchmarks:
            questions, report = load_questions(bench)
            reports[bench.name] = {"summary": report.summary(), "bad": report.bad}
            if report.rejected:
                log.warning("benchmark %s", report.summary())
            prompts = [render_prompt(tok, q.question, None, few_shot=spec.heuristics.fewShot) for q in questions]
            groups, _ = run_async(generate_all(handle, prompts, sampling, desc=f"eval {bench.name}",
                                               progress=ctx.progress, concurrency=2 * ev.replicas))
            golds = [q.answer for q, g in zip(questions, groups) for _ in g]
            texts = [c["text"] for g in groups for c in g]
            verdicts = verifier.verify_many(golds, texts)
            counts, at = [], 0
            for q, g in zip(questions, groups):
                vs = verdicts[at : at + len(g)]
                counts.append((len(g), sum(v.correct for v in vs)))
                for j, (c, v) in enumerate(zip(g, vs)):
                    sample_rows.append({"benchmark": bench.name, "question_id": q.id, "sample_index": j,
                                        "completion": c["text"], "status": v.status, "predicted": v.predicted,
                                        "completion_tokens": len(c["token_ids"])})
                if g:
                    chains.append(g[0]["text"])
                at += len(g)
            results[bench.name] = mean_pass_at_k(counts, ev.k)
            reports[bench.name]["problems"] = len(counts)
            reports[bench.name]["unparsable"] = sum(v.status == "unparsable" for v in verdicts)
            for k, v in results[bench.name].items():
                metrics.PASS_AT_K.labels(ctx.arm, bench.name, str(k)).set(v)
    if len(results) > 1:
        results["average"] = {k: sum(r[k] for r in results.values()) / len(results) for k in ev.k}

    composition = None
    if ev.composition.enabled and chains:
        chosen = select(spec.heuristics.count, spec.heuristics.names)
        if ev.composition.classifier == "judge":
            composition = run_async(_judge_composition(ctx, chains[:MAX_COMPOSITION_CHAINS], chosen)).to_dict()
        else:
            composition = analyse(chains[:MAX_COMPOSITION_CHAINS], chosen, threshold=ev.composition.threshold).to_dict()
        metrics.COMPOSITION_RATE.labels(ctx.arm).set(composition["rate"])

    pq.write_table(pa.Table.from_pylist(sample_rows), out_dir / "samples.parquet")
    payload = {"model": model_id, "arm": ctx.arm, "k": ev.k, "samples": ev.samples,
               "pass_at_k": {b: {str(k): v for k, v in r.items()} for b, r in results.items()},
               "benchmarks": reports, "composition": composition}
    (out_dir / "eval.json").write_text(json.dumps(payload, indent=2))
    md = [f"# Evaluation: {model_id} ({ctx.arm})", "", f"{ev.samples} samples per problem, temperature {ev.temperature}.",
          "", markdown_table(results, ev.k)]
    if composition:
        md += ["", f"Chains combining two or more heuristics: {100 * composition['rate']:.1f}% "
                   f"of {composition['chains']} chains."]
    (out_dir / "eval.md").write_text("\n".join(md) + "\n")
    plot_pass_at_k(results, out_dir / "passk.png", title=f"pass@k — {ctx.arm}")
    headline = results.get("average") or next(iter(results.values()))
    figures = {f"pass@{k}": v for k, v in headline.items()}
    if composition:
        figures["composition_rate"] = composition["rate"]
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
