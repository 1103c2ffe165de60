"""Stage 5 — evaluation: `samples` completions per problem, unbiased pass@k for every k, composition.

The model is the arm's latest model artifact (``ctx.inputs["model"]``: a folder with ``model/``), or
the base model for the ``base`` arm. Outputs: ``eval.json``, ``eval.md`` (per-benchmark table and
average), ``passk.png`` (pass@k against k) and ``samples.parquet`` (every completion and its verdict).

Each benchmark is prompted and graded by the grader of its kind (``evaluation.benchmarks[].kind``, read off
the file for ``auto``: `polya.benchmarks`, `polya.graders`): math by math-verify under the math prompt, code
(HumanEval) by running the tests in the sandbox, choice (MuSR) by the chosen letter. The ``average`` row is
the mean over the **math** benchmarks only, as the paper reports it (its six-benchmark average is over math
benchmarks; HumanEval and MuSR are reported beside it, not inside it); it is there when there are two or more
math benchmarks, and it is the headline figure (else the first math benchmark, else the first benchmark).
When code or choice benchmarks are present, eval.md notes the mean over every benchmark of every kind under
the table (``average_all`` in eval.json, null otherwise).

Composition (`polya.analysis.composition`, whose docstring says how the figures are defined): up to
``composition.chains`` completions, an equal share per benchmark, classified against the whole catalogue;
the kept traces that mid-trained the arm's model, found by content address, classified the same way for
the combinations never seen together there.
"""
from __future__ import annotations

import json

from polya import metrics
from polya.analysis.chain_sample import even_sample, subsample
from polya.analysis.composition import composition_rate, markdown, summarise
from polya.analysis.passk import mean_pass_at_k
from polya.analysis.plots import plot_pass_at_k
from polya.benchmarks import load_benchmark
from polya.engines.base import Sampling
from polya.graders import GraderSettings, Graders
from polya.heuristics import CATALOGUE_IDS
from polya.models import load_tokenizer
from polya.recipe import MODEL_SLOT, Stage, lineage_step, midtraining_data, planned_keys
from polya.stages.common import StageContext, StageResult, generate_all, log, rollout_service, run_async


def model_ref(ctx: StageContext) -> tuple[str, str]:
    """(model reference the replicas resolve, identity for reports)."""
    if MODEL_SLOT in ctx.inputs:
        art = ctx.inputs[MODEL_SLOT]
        return art.child("model"), f"{art.stage}:{art.key}"
    return ctx.run.spec.model.name, ctx.run.spec.model.name


def markdown_table(results: dict[str, dict[int, float]], ks: list[int], kinds: dict[str, str] | None = None) -> str:
    """The pass@k table; ``kinds``: benchmark -> kind, a column (the ``average`` row is the math average)."""
    kinds = kinds or {}
    head = "| benchmark | kind | " + " | ".join(f"pass@{k}" for k in ks) + " |"
    sep = "|---|---|" + "---:|" * len(ks)
    lines = [head, sep]
    for name, row in results.items():
        kind = kinds.get(name, "math" if name == AVERAGE else "")
        lines.append(f"| {name} | {kind} | " + " | ".join(f"{row[k]:.2f}" for k in ks) + " |")
    return "\n".join(lines)


AVERAGE = "average"


def averages(results: dict[str, dict[int, float]], kinds: dict[str, str], ks: list[int]) -> dict[str, dict[int, float]]:
    """``average``: the mean over the math benchmarks (two or more of them); ``average_all``: over every benchmark
    of every kind (two or more)."""
    def mean(names: list[str]) -> dict[int, float]:
        return {k: sum(results[b][k] for b in names) / len(names) for k in ks}

    math_names = [b for b in results if kinds.get(b) == "math"]
    out = {AVERAGE: mean(math_names)} if len(math_names) > 1 else {}
    if len(results) > 1:
        out["average_all"] = mean(list(results))
    return out


def headline(results: dict[str, dict[int, float]], kinds: dict[str, str]) -> dict[int, float]:
    """The math average, else the first math benchmark, else the first benchmark."""
    if AVERAGE in results:
        return results[AVERAGE]
    return next((results[b] for b in results if kinds.get(b) == "math"), next(iter(results.values())))


async def _judge_sets(ctx: StageContext, chains: list[str]) -> list[set[str]]:
    """Catalogue ids per chain, from the run's judge model (filtering.rewardModel, kind judge) on its own engine."""
    from polya.analysis.heuristic_judge import judge
    from polya.engines.base import create_engine

    rm = ctx.run.spec.filtering.rewardModel
    engine = create_engine(ctx.engine(rm, rm.name, served_name=rm.name))
    try:
        return await judge(chains, engine)
    finally:
        await engine.close()


def _classify(ctx: StageContext, groups: list[list[str]]) -> list[list[set[str]]]:
    """Each group of chains classified against the whole catalogue by the configured classifier (one pass)."""
    from polya.analysis.heuristic_matcher import match

    comp = ctx.settings.composition
    flat = [c for g in groups for c in g]
    sets = run_async(_judge_sets(ctx, flat)) if comp.classifier == "judge" else match(flat, comp.threshold)
    out, at = [], 0
    for g in groups:
        out.append(sets[at : at + len(g)])
        at += len(g)
    return out


def kept_traces(ctx: StageContext) -> list[str] | None:
    """Up to ``composition.keptChains`` kept traces that mid-trained this arm's model (a seeded sample); None
    when its line has no mid-training or the filter artifact is not in storage."""
    import pyarrow.parquet as pq

    spec, comp = ctx.run.spec, ctx.settings.composition
    source, mid = midtraining_data(ctx.arm.name), lineage_step(ctx.arm.name, Stage.MIDTRAIN)
    keys = planned_keys(spec) if source is not None and comp.keptChains > 0 else {}
    if source is None or mid is None or source.key not in keys or mid.key not in keys:
        return None
    art = ctx.store.artifact(str(source.stage), keys[source.key])
    if not art.exists():
        log.warning("composition: the kept traces of %s (%s) are not in storage; no never-seen figures",
                    source.key, art.uri)
        return None
    texts = pq.read_table(art.fetch() / "sft.parquet", columns=["completion"]).column("completion").to_pylist()
    return subsample(texts, comp.keptChains, spec.seed)


def _composition(ctx: StageContext, chains: dict[str, list[tuple[str, list[str]]]]) -> dict | None:
    """``chains``: benchmark -> [(question id, its completions)]. The eval.json ``composition`` block."""
    spec, comp = ctx.run.spec, ctx.settings.composition
    if not comp.enabled or not any(texts for probs in chains.values() for _, texts in probs):
        return None
    picks = even_sample({b: [texts for _, texts in probs] for b, probs in chains.items()}, comp.chains, spec.seed)
    texts = [chains[b][p][1][s] for b, p, s in picks]
    kept = kept_traces(ctx)
    used, reference = _classify(ctx, [texts, kept or []])
    result = summarise(used, CATALOGUE_IDS, reference if kept else None).to_dict()  # no kept traces: no reference
    result["classifier"] = comp.classifier
    result["per_benchmark"] = {b: composition_rate([u for (pb, _, _), u in zip(picks, used) if pb == b])
                               for b in chains}
    result["per_chain"] = [{"benchmark": b, "question_id": chains[b][p][0], "sample_index": s,
                            "heuristics": sorted(u)} for (b, p, s), u in zip(picks, used)]
    metrics.COMPOSITION_RATE.labels(ctx.arm.name).set(result["rate"])
    return result


def _benchmark(ctx: StageContext, bench, handle, graders: Graders, tok, sampling: Sampling,
               out: dict) -> dict[int, float]:
    """One benchmark: sample, grade by its kind, pass@k. Appends its sample rows, and (question id, completions)
    per problem for the composition analysis, to ``out``; records its kind in ``out["kinds"]``."""
    ev = ctx.settings
    kind, questions, report = load_benchmark(bench)
    grader = graders[kind]  # before sampling: a code benchmark without a sandbox fails here
    out["kinds"][bench.name] = kind
    out["reports"][bench.name] = {"kind": kind, "summary": report.summary(), "bad": report.bad}
    if report.rejected:
        log.warning("benchmark %s", report.summary())
    prompts = [grader.prompt(tok, q) for q in questions]
    groups, _ = run_async(generate_all(handle, prompts, sampling, desc=f"eval {bench.name}",
                                       progress=ctx.progress, concurrency=2 * ev.replicas))
    verdicts = grader.grade([q for q, g in zip(questions, groups) for _ in g], [c["text"] for g in groups for c in g])
    counts, at = [], 0
    for q, g in zip(questions, groups):
        vs = verdicts[at : at + len(g)]
        counts.append((len(g), sum(v.correct for v in vs)))
        out["samples"] += [{"benchmark": bench.name, "question_id": q.id, "sample_index": j, "completion": c["text"],
                            "status": v.status, "predicted": v.predicted, "completion_tokens": len(c["token_ids"])}
                           for j, (c, v) in enumerate(zip(g, vs))]
        out["chains"].setdefault(bench.name, []).append((q.id, [c["text"] for c in g]))
        at += len(g)
    out["reports"][bench.name].update(problems=len(counts), unparsable=sum(v.status == "unparsable" for v in verdicts))
    result = mean_pass_at_k(counts, ev.k)
    for k, v in result.items():
        metrics.PASS_AT_K.labels(ctx.arm.name, bench.name, str(k)).set(v)
    return result


def _write(ctx: StageContext, out_dir, model_id: str, results: dict, out: dict, composition: dict | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ev, kinds = ctx.settings, out["kinds"]
    mixed = set(kinds.values()) - {"math"}  # code or choice benchmarks beside (or instead of) math ones
    overall = averages({b: r for b, r in results.items() if b in kinds}, kinds, ev.k).get("average_all")
    overall = overall if mixed else None
    pq.write_table(pa.Table.from_pylist(out["samples"]), out_dir / "samples.parquet")
    payload = {"model": model_id, "arm": ctx.arm.name, "k": ev.k, "samples": ev.samples,
               "pass_at_k": {b: {str(k): v for k, v in r.items()} for b, r in results.items()},
               "kinds": kinds, "average_all": {str(k): v for k, v in overall.items()} if overall else None,
               "benchmarks": out["reports"], "composition": composition}
    (out_dir / "eval.json").write_text(json.dumps(payload, indent=2))
    md = [f"# Evaluation: {model_id} ({ctx.arm.name})", "",
          f"{ev.samples} samples per problem, temperature {ev.temperature}.", "", markdown_table(results, ev.k, kinds)]
    if mixed:
        md += ["", "`average` is the mean over the math benchmarks (as the paper reports it); code and choice "
                   "benchmarks are reported beside it."]
    if overall:
        md.append("Mean over every benchmark of every kind: "
                  + ", ".join(f"pass@{k} {v:.2f}" for k, v in overall.items()) + ".")
    if composition:
        md += ["", "## Composition", ""] + markdown(composition, k=10)
    (out_dir / "eval.md").write_text("\n".join(md) + "\n")
    plot_pass_at_k(results, out_dir / "passk.png", title=f"pass@k — {ctx.arm.name}")


def run(ctx: StageContext) -> StageResult:
    spec, ev = ctx.run.spec, ctx.settings
    art, cached = ctx.begin()
    if cached:
        return cached
    model_path, model_id = model_ref(ctx)
    tok = load_tokenizer(model_path, spec.model)
    sampling = Sampling(temperature=ev.temperature, top_p=ev.topP, max_tokens=ev.maxTokens, n=ev.samples,
                        seed=spec.seed + 1, logprobs=False)  # unused: ~15% faster
    cfg = ctx.engine(ev, model_path, served_name=model_id)
    results: dict[str, dict[int, float]] = {}
    out: dict = {"reports": {}, "samples": [], "chains": {}, "kinds": {}}
    settings = GraderSettings(workers=spec.filtering.verifyWorkers,
                              verify_timeout_s=spec.filtering.verifyTimeoutSeconds, few_shot=spec.heuristics.fewShot)
    with rollout_service(ctx, cfg, ev, name=f"eval-{ctx.arm.name}") as handle, Graders(settings) as graders:
        for bench in ev.benchmarks:
            results[bench.name] = _benchmark(ctx, bench, handle, graders, tok, sampling, out)
    results.update({b: r for b, r in averages(results, out["kinds"], ev.k).items() if b == AVERAGE})
    composition = _composition(ctx, out["chains"])
    _write(ctx, art.local, model_id, results, out, composition)
    figures = {f"pass@{k}": v for k, v in headline(results, out["kinds"]).items()}
    if composition:
        figures["composition_rate"] = composition["rate"]
        if composition["unseen"] is not None:
            figures["composition_unseen_rate"] = composition["unseen"]["rate"]
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
