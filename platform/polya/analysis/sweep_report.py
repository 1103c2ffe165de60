"""The sweep report: ``<storage.uri>/sweep-report/`` with sweep.md, sweep.json and a pass@k plot across arms.

One row per (sweep arm, model) — the models each child evaluated (base, mid-trained, Polya, the baselines) —
with its pass@k at each k as the mean over benchmarks, seeds and problems and a bootstrap interval over
seeds and problems (`polya.analysis.bootstrap`), and its composition rate (mean over seeds, with their
range). A model several arms share (the base model, a baseline whose inputs the arms do not change) is the
same artifact in each: it gets one row, naming every arm it stands for. Reads only the children's results
and evaluation artifacts, so it can be rebuilt at any time; children that have not finished are counted,
not waited for.
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


@dataclass
class Row:
    arm: str  # the sweep arm
    model: str  # the run arm whose model was evaluated
    by_seed: dict[int, Evaluated] = field(default_factory=dict)
    also: list[str] = field(default_factory=list)  # other sweep arms with the very same artifacts

    @property
    def label(self) -> str:
        return f"{'/'.join([self.arm, *self.also])}: {ARMS[Arm(self.model)].label}"


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
             plots: list[tuple[str, str]]) -> str:
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
    for title, png in plots:
        md += ["", f"## {title}", "", f"![{title}]({png})"]
    return "\n".join(md) + "\n"


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
    from polya.analysis.plots import plot_pass_at_k

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
    status = f"{seen['with_results']}/{seen['children']} children have results."
    (out_dir / "sweep.json").write_text(json.dumps({"sweep": sweep.metadata.name, "k": ks, "rows": summary,
                                                    "children": seen}, indent=2))
    path = out_dir / "sweep.md"
    path.write_text(markdown(sweep.metadata.name, summary, ks, sweep.spec.confidence, status, plots))
    return path
