"""The sweep report: ``<storage.uri>/sweep-report/`` with sweep.md, sweep.json and a pass@k plot across arms.

One row per (sweep arm, model) — the models each child evaluated (base, mid-trained, Polya, the baselines) —
with its pass@k at each k as the mean over benchmarks, seeds and problems and a bootstrap interval over
seeds and problems (`polya.analysis.bootstrap`), and its composition rate (mean over seeds, with their
range). A model several arms share (the base model, a baseline whose inputs the arms do not change) is the
same artifact in each: it gets one row, naming every arm it stands for. Then every trained model's paired
difference from vanilla GRPO (same seeds, same problems) with its interval, the same model's paired
difference between arms (n = 4 against a budget-matched n = 1), the GRPO training reward of the
first and last five steps, and what filtering kept of the self-generated data, over seeds. Reads only the
children's results and evaluation artifacts, so it can be rebuilt at any time; children that have not
finished are counted, not waited for.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from polya.analysis.bootstrap import Interval, bootstrap
from polya.analysis.passk import pass_at_k
from polya.recipe import ARMS, Arm, Stage


@dataclass
class Evaluated:
    """One child's evaluation of one model: (n, c) per (benchmark, question) and its composition rate."""

    artifact: str
    counts: dict[str, dict[str, tuple[int, int]]]
    composition: float | None = None
    #: the figures of the stages of the same child and run arm (``grpo``, ``filter``, ...), from its results
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    #: and their artifacts (a stage two arms share is one artifact)
    stage_uris: dict[str, str] = field(default_factory=dict)
    #: the mean reward of each GRPO step of that arm (its steps.json; NaN where a step was skipped)
    rewards: list[float] = field(default_factory=list)


@dataclass
class Row:
    arm: str  # the sweep arm
    model: str  # the run arm whose model was evaluated
    by_seed: dict[int, Evaluated] = field(default_factory=dict)
    also: list[str] = field(default_factory=list)  # other sweep arms with the very same artifacts

    @property
    def label(self) -> str:
        return f"{'/'.join([self.arm, *self.also])}: {ARMS[Arm(self.model)].label}"


#: the model the differences table subtracts: RL without mid-training, the paper's baseline
REFERENCE = Arm.VANILLA


# ------------------------------------------------------------------------------------------------ pure
def counts_of(samples: list[dict[str, Any]]) -> dict[str, dict[str, tuple[int, int]]]:
    """(n, c) per benchmark and question from an evaluation's sample rows."""
    out: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for s in samples:
        cell = out[s["benchmark"]][str(s["question_id"])]
        cell[0] += 1
        cell[1] += s["status"] == "correct"
    return {b: {q: (n, c) for q, (n, c) in qs.items()} for b, qs in out.items()}


def blocks(by_seed: dict[int, Evaluated], k: int) -> list[np.ndarray]:
    """Per benchmark, the (seeds, problems) matrix of pass@k (%), on the problems every seed answered."""
    seeds = sorted(by_seed)
    benches = set.intersection(*(set(by_seed[s].counts) for s in seeds))
    out = []
    for b in sorted(benches):
        questions = sorted(set.intersection(*(set(by_seed[s].counts[b]) for s in seeds)))
        if questions:
            out.append(np.array([[100.0 * pass_at_k(*by_seed[s].counts[b][q], k) for q in questions]
                                 for s in seeds]))
    return out


def paired_blocks(a: dict[int, Evaluated], b: dict[int, Evaluated], k: int) -> list[np.ndarray]:
    """Per benchmark, the (seeds, problems) matrix of pass@k(a) - pass@k(b) (points) on the seeds, benchmarks
    and problems both answered: a paired difference (the same held-out problems, the same seed's draw)."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return []
    both = {s: {"a": a[s], "b": b[s]} for s in seeds}
    benches = set.intersection(*(set(e.counts) for pair in both.values() for e in pair.values()))
    out = []
    for bench in sorted(benches):
        questions = sorted(set.intersection(*(set(e.counts[bench]) for pair in both.values() for e in pair.values())))
        if any(k > e.counts[bench][q][0] for pair in both.values() for e in pair.values() for q in questions):
            return []  # pass@k needs k <= the samples of every paired problem
        if questions:
            out.append(np.array([[100.0 * (pass_at_k(*both[s]["a"].counts[bench][q], k)
                                           - pass_at_k(*both[s]["b"].counts[bench][q], k)) for q in questions]
                                 for s in seeds]))
    return out


def reference_for(row: Row, refs: list[Row]) -> Row | None:
    """The reference row ``row`` is compared with: the one standing for ``row``'s own sweep arm (an arm that
    changes the reference's inputs has its own), else the only one there is (an arm without that baseline,
    e.g. ``baselines: []``, compared with the sweep's one), else none."""
    own = next((r for r in refs if row.arm in (r.arm, *r.also)), None)
    return own or (refs[0] if len(refs) == 1 else None)


def differences(rows: list[Row], ks: list[int], reference: str, resamples: int, confidence: float
                ) -> list[dict[str, Any]]:
    """Every trained row (not the base model, not a reference itself) minus its ``reference`` model's row
    (`reference_for`), paired on seeds and problems, with its bootstrap interval: whether an arm beats e.g.
    vanilla GRPO is read off this interval, not off two overlapping intervals of the rows."""
    refs = [r for r in rows if r.model == reference]
    out = []
    for row in rows:
        ref = reference_for(row, refs)
        if ref is None or row.model in (reference, Arm.BASE):
            continue
        out.append(paired_delta(row, ref, ks, resamples, confidence))
    return out


def paired_delta(row: Row, ref: Row, ks: list[int], resamples: int, confidence: float) -> dict[str, Any]:
    """pass@k(row) - pass@k(ref) per k, paired on seeds and problems, with its bootstrap interval."""
    entry: dict[str, Any] = {"label": row.label, "reference": ref.label, "delta": {}}
    for k in ks:
        got = paired_blocks(row.by_seed, ref.by_seed, k)
        if got:
            iv = bootstrap(got, resamples=resamples, confidence=confidence, seed=k)
            entry["delta"][str(k)] = {"mean": iv.mean, "low": iv.low, "high": iv.high, "seeds": got[0].shape[0]}
    return entry


def arm_differences(rows: list[Row], ks: list[int], resamples: int, confidence: float) -> list[dict[str, Any]]:
    """The same model across sweep arms (e.g. Polya with n = 4 against the budget-matched n = 1): each later
    arm's row minus the first arm's, paired on seeds and problems. Rows several arms share are not compared
    (they are one artifact)."""
    out = []
    for model in dict.fromkeys(r.model for r in rows):
        same = [r for r in rows if r.model == model]
        out += [paired_delta(r, same[0], ks, resamples, confidence) for r in same[1:]]
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values)), "n": len(values)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and np.isfinite(v)


def stage_table(rows: list[Row], stage: str, figures: tuple[str, ...]) -> list[dict[str, Any]]:
    """Per row whose model ran ``stage``: each of ``figures`` over seeds (mean, min, max). Rows whose ``stage``
    is the same artifact in every seed (arms that change only later stages) are one entry naming every arm."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        uris = tuple(sorted((s, e.stage_uris.get(stage)) for s, e in row.by_seed.items()))
        shared = all(uri is not None for _, uri in uris)
        groups.setdefault((row.model, uris) if shared else (id(row),), []).append(row)
    out = []
    for same in groups.values():
        row = same[0]
        per_seed = [e.stages[stage] for e in row.by_seed.values() if stage in e.stages]
        # a figure a seed could not compute (NaN: a GRPO run whose every step was skipped) is left out
        cells = {f: spread([float(fig[f]) for fig in per_seed if _finite(fig.get(f))]) for f in figures
                 if any(_finite(fig.get(f)) for fig in per_seed)}
        arms = list(dict.fromkeys(a for r in same for a in (r.arm, *r.also)))
        if cells:
            out.append({"label": f"{'/'.join(arms)}: {ARMS[Arm(row.model)].label}", "figures": cells})
    return out


def merge_shared(rows: list[Row]) -> list[Row]:
    """Rows whose per-seed artifacts are identical (a model several arms share) folded into the first."""
    kept: list[Row] = []
    for row in rows:
        same = next((r for r in kept if r.model == row.model and
                     {s: e.artifact for s, e in r.by_seed.items()} == {s: e.artifact for s, e in row.by_seed.items()}),
                    None)
        if same is None:
            kept.append(row)
        else:
            same.also.append(row.arm)
    return kept


def summarise(rows: list[Row], ks: list[int], resamples: int, confidence: float) -> list[dict[str, Any]]:
    out = []
    for row in rows:
        entry: dict[str, Any] = {"arm": row.arm, "also": row.also, "model": row.model, "label": row.label,
                                 "seeds": sorted(row.by_seed), "pass_at_k": {}}
        fewest = min((n for e in row.by_seed.values() for qs in e.counts.values() for n, _ in qs.values()), default=0)
        for k in ks:
            got = blocks(row.by_seed, k) if k <= fewest else []  # pass@k needs k <= samples of every problem
            if got:
                iv = bootstrap(got, resamples=resamples, confidence=confidence, seed=k)
                entry["pass_at_k"][str(k)] = {"mean": iv.mean, "low": iv.low, "high": iv.high}
        comps = [e.composition for e in row.by_seed.values() if e.composition is not None]
        if comps:
            entry["composition"] = {"mean": float(np.mean(comps)), "min": min(comps), "max": max(comps)}
        out.append(entry)
    return out


def markdown(name: str, summary: list[dict[str, Any]], ks: list[int], confidence: float, status: str,
             plots: list[tuple[str, str]], extra: dict[str, Any] | None = None) -> str:
    """The report's text: the pass@k table, then (from ``extra``) the paired differences against the reference
    model, the GRPO training reward and the self-generated data, then the plots."""
    extra = extra or {}
    shown = [k for k in ks if k in (1, 4, 8, 16, 64) or k == max(ks)]
    md = [f"# PolyaSweep `{name}`", "", status, "",
          f"pass@k (%): mean over benchmarks, seeds and problems; [{int(confidence * 100)}% bootstrap interval over "
          "seeds and problems]. A model several arms share is one row.", "",
          "| arm: model | seeds | " + " | ".join(f"pass@{k}" for k in shown) + " | composition |",
          "|---|---|" + "---|" * len(shown) + "---|"]
    for e in summary:
        cells = []
        for k in shown:
            iv = e["pass_at_k"].get(str(k))
            cells.append(str(Interval(iv["mean"], iv["low"], iv["high"])) if iv else "—")
        comp = e.get("composition")
        comp_cell = (f"{100 * comp['mean']:.1f}% ({100 * comp['min']:.1f}–{100 * comp['max']:.1f})" if comp else "—")
        md.append(f"| {e['label']} | {len(e['seeds'])} | " + " | ".join(cells) + f" | {comp_cell} |")
    md += differences_markdown(extra.get("differences", []), shown, confidence)
    md += differences_markdown(extra.get("between_arms", []), shown, confidence,
                               title="The same model across arms (each against the first arm's)")
    md += table_markdown("GRPO training reward", "mean reward of the first and last five GRPO steps (mean over "
                         "seeds [min, max]); the rise is last five minus first five", extra.get("training", []),
                         (("reward_first5", "first 5 steps"), ("reward_last5", "last 5 steps")), rise=True)
    md += table_markdown("Self-generated data", "what filtering kept of the self-generated traces (mean over seeds "
                         "[min, max])", extra.get("data", []),
                         (("traces", "traces"), ("verify_rate", "verified share"), ("kept", "kept"),
                          ("vendi", "Vendi")))
    for title, png in plots:
        md += ["", f"## {title}", "", f"![{title}]({png})"]
    return "\n".join(md) + "\n"


def _spread_cell(c: dict[str, float]) -> str:
    if all(float(c[x]).is_integer() for x in ("mean", "min", "max")):  # counts: 128, not 128.0
        fmt = (lambda v: f"{v:.0f}")
    else:
        fmt = (lambda v: f"{v:.3g}") if abs(c["mean"]) < 10 else (lambda v: f"{v:.1f}")
    return fmt(c["mean"]) if c["min"] == c["max"] else f"{fmt(c['mean'])} [{fmt(c['min'])}, {fmt(c['max'])}]"


def differences_markdown(diffs: list[dict[str, Any]], shown: list[int], confidence: float,
                         title: str = f"Differences against {ARMS[REFERENCE].label}") -> list[str]:
    if not diffs:
        return []
    md = ["", f"## {title}", "",
          f"pass@k(row) - pass@k(reference) in points, paired on seeds and problems; [{int(confidence * 100)}% "
          "bootstrap interval]. An interval that excludes 0 is a difference this sweep resolves.", "",
          "| model | reference | seeds | " + " | ".join(f"Δ pass@{k}" for k in shown) + " |",
          "|---|---|---|" + "---|" * len(shown)]
    for d in diffs:
        cells = [str(Interval(v["mean"], v["low"], v["high"])) if (v := d["delta"].get(str(k))) else "—"
                 for k in shown]
        seeds = max((v["seeds"] for v in d["delta"].values()), default=0)
        md.append(f"| {d['label']} | {d['reference']} | {seeds} | " + " | ".join(cells) + " |")
    return md


def table_markdown(title: str, caption: str, table: list[dict[str, Any]], columns: tuple[tuple[str, str], ...],
                   rise: bool = False) -> list[str]:
    if not table:
        return []
    md = ["", f"## {title}", "", caption + ".", "",
          "| model | seeds | " + " | ".join(h for _, h in columns) + (" | rise |" if rise else " |"),
          "|---|---|" + "---|" * (len(columns) + rise)]
    for entry in table:
        figs = entry["figures"]
        cells = [_spread_cell(figs[f]) if f in figs else "—" for f, _ in columns]
        if rise:
            first, last = figs.get(columns[0][0]), figs.get(columns[1][0])
            cells.append(f"{last['mean'] - first['mean']:+.3f}" if first and last else "—")
        n = max((c["n"] for c in figs.values()), default=0)
        md.append(f"| {entry['label']} | {n} | " + " | ".join(cells) + " |")
    return md


# --------------------------------------------------------------------------------------------------- I/O
def _evaluated(artifact: str) -> Evaluated | None:
    import pyarrow.parquet as pq

    from polya.artifacts import fetch_uri

    try:
        local = fetch_uri(artifact)
        samples = pq.read_table(local / "samples.parquet", columns=["benchmark", "question_id", "status"]).to_pylist()
        ev = json.loads((local / "eval.json").read_text())
    except (OSError, ValueError, KeyError):
        return None
    comp = ev.get("composition") or {}
    return Evaluated(artifact, counts_of(samples), comp.get("rate"))


def _rewards(result: dict[str, Any] | None) -> list[float]:
    from polya.storage import join, read_json

    if not result:
        return []
    try:
        rows = read_json(join(result["artifactUri"], "steps.json"))
    except (OSError, ValueError, KeyError):
        return []
    return step_rewards(rows)


def step_rewards(rows: list[dict[str, Any]]) -> list[float]:
    """Mean reward by GRPO step (index = step - 1), NaN for a step skipped (all its groups zero-signal), so
    seeds stay aligned on the step axis."""
    out = [float("nan")] * max((int(r["step"]) for r in rows), default=0)
    for r in rows:
        if "reward_mean" in r:
            out[int(r["step"]) - 1] = float(r["reward_mean"])
    return out


def reward_curves(rows: list[Row]) -> dict[str, list[list[float]]]:
    """label -> per-seed GRPO reward curves, for the rows whose model ran GRPO."""
    return {row.label: runs for row in rows
            if (runs := [e.rewards for _, e in sorted(row.by_seed.items()) if e.rewards])}


def collect(sweep) -> tuple[list[Row], dict[str, int]]:
    """Rows of every (sweep arm, evaluated model) from the children's results; and how many children have
    results at all / in total."""
    from polya.artifacts import read_results
    from polya.sweep import children

    rows: dict[tuple[str, str], Row] = {}
    seen = {"with_results": 0, "children": 0}
    for child in children(sweep):
        seen["children"] += 1
        arm, seed = child.metadata.labels["polya.dev/sweep-arm"], int(child.metadata.labels["polya.dev/sweep-seed"])
        results = read_results(child.spec.storage.uri)
        seen["with_results"] += bool(results)
        for key, res in sorted(results.items()):
            model, stage = key.split("/", 1)
            if stage != Stage.EVALUATE:
                continue
            ev = _evaluated(res["artifactUri"])
            if ev is not None:
                mine = {k.split("/", 1)[1]: r for k, r in results.items() if k.split("/", 1)[0] == model}
                ev.stages = {stage: r.get("figures", {}) for stage, r in mine.items()}
                ev.stage_uris = {stage: r["artifactUri"] for stage, r in mine.items() if r.get("artifactUri")}
                ev.rewards = _rewards(mine.get(Stage.GRPO))
                rows.setdefault((arm, model), Row(arm, model)).by_seed[seed] = ev
    order = {a.name: i for i, a in enumerate(sweep.spec.arms)}
    models = {str(a): i for i, a in enumerate(ARMS)}
    return sorted(rows.values(), key=lambda r: (order[r.arm], models.get(r.model, 99))), seen


def report_ks(sweep) -> list[int]:
    """Every k some child evaluates (an arm may override ``evaluation.k``); a row shows each k its samples
    allow (`summarise`)."""
    from polya.sweep import children

    return sorted({k for child in children(sweep) for k in child.spec.evaluation.k})


def build_sweep_report(sweep, out_dir: Path) -> Path:
    from polya.analysis.plots import plot_pass_at_k, plot_reward_curves

    out_dir.mkdir(parents=True, exist_ok=True)
    rows, seen = collect(sweep)
    rows = merge_shared(rows)
    ks = report_ks(sweep)
    summary = summarise(rows, ks, sweep.spec.bootstrap, sweep.spec.confidence)
    plots = []
    curves = {e["label"]: {int(k): v["mean"] for k, v in e["pass_at_k"].items()} for e in summary if e["pass_at_k"]}
    if curves:
        plot_pass_at_k(curves, out_dir / "sweep_passk.png", title=f"pass@k — {sweep.metadata.name}")
        plots.append(("pass@k against k", "sweep_passk.png"))
    if rewards := reward_curves(rows):
        plot_reward_curves(rewards, out_dir / "sweep_rewards.png", title=f"GRPO reward — {sweep.metadata.name}")
        plots.append(("GRPO training reward per step", "sweep_rewards.png"))
    extra = {"differences": differences(rows, ks, REFERENCE, sweep.spec.bootstrap, sweep.spec.confidence),
             "between_arms": arm_differences(rows, ks, sweep.spec.bootstrap, sweep.spec.confidence),
             "training": stage_table(rows, Stage.GRPO, ("reward_first5", "reward_last5")),
             "data": stage_table([r for r in rows if r.model in (Arm.POLYA, Arm.STAR)], Stage.FILTER,
                                 ("traces", "verify_rate", "kept", "vendi"))}
    status = f"{seen['with_results']}/{seen['children']} children have results."
    (out_dir / "sweep.json").write_text(json.dumps({"sweep": sweep.metadata.name, "k": ks, "rows": summary,
                                                    "children": seen, **extra}, indent=2))
    path = out_dir / "sweep.md"
    path.write_text(markdown(sweep.metadata.name, summary, ks, sweep.spec.confidence, status, plots, extra))
    return path
