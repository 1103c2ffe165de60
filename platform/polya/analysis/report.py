"""The run report: ``<storage>/report/`` with report.md, report.html and PNG plots.

Reads only stage artifacts (eval.json, steps.json, per_heuristic.json, manifests), so it can be rebuilt
at any time from a run folder (`polya report RUN.yaml`).
"""
from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import yaml

from polya.analysis.composition import markdown as composition_markdown
from polya.analysis.plots import plot_bar_pairs, plot_pass_at_k, plot_rewards
from polya.recipe import ARMS, BEFORE_RL_ARMS, MAIN_ARM, Arm, PlannedStage, Stage
from polya.storage import join, read_json


def _label(arm: str) -> str:
    return ARMS[Arm(arm)].label


def _headline(ev: dict) -> dict[str, float]:
    """The benchmark average of an eval.json, or its only benchmark."""
    table = ev["pass_at_k"]
    return table.get("average") or next(iter(table.values()))


def _plots(results: dict[str, Any], evals: dict[str, dict], out_dir: Path) -> list[tuple[str, str]]:
    plots: list[tuple[str, str]] = []
    curves = {_label(arm): {int(k): v for k, v in _headline(ev).items()} for arm, ev in evals.items()}
    if curves:
        plot_pass_at_k(curves, out_dir / "passk.png", title="pass@k by model")
        plots.append(("pass@k against k", "passk.png"))
    filter_key = PlannedStage(MAIN_ARM, Stage.FILTER).key
    rows = _grpo_rows(results)
    if rows:
        plot_rewards(rows, out_dir / "grpo_reward.png")
        plots.append(("GRPO reward curve", "grpo_reward.png"))
    if filter_key in results:
        per_h = read_json(join(results[filter_key]["artifact"], "per_heuristic.json"))
        plot_bar_pairs({h: (d["pass_rate"], d["keep_rate"]) for h, d in per_h.items()}, out_dir / "heuristics.png",
                       "per-heuristic pass and keep rates", ("pass rate", "keep rate"))
        plots.append(("per-heuristic pass and keep rates", "heuristics.png"))
    comp = {arm: ev["composition"]["rate"] for arm, ev in evals.items() if ev.get("composition")}
    if comp:
        before = next((comp[a] for a in BEFORE_RL_ARMS if a in comp), 0.0)
        plot_bar_pairs({"composition rate": (before, comp.get(MAIN_ARM, 0.0))}, out_dir / "composition.png",
                       "chains combining >= 2 heuristics", ("before RL", "after RL"))
        plots.append(("composition rate before and after RL", "composition.png"))
    return plots


def reward_windows(rows: list[dict], window: int = 5) -> tuple[float, float]:
    """Mean training reward of the first and of the last ``window`` scored steps (fewer when the run has under
    2 x window steps: the two halves). One step's mean over a few groups is noisy; five steps' means are what the
    report compares to say whether GRPO moved the reward."""
    scored = [r["reward_mean"] for r in rows if "reward_mean" in r]
    if not scored:
        return float("nan"), float("nan")
    w = max(1, min(window, len(scored) // 2))
    return sum(scored[:w]) / w, sum(scored[-w:]) / w


def _grpo_rows(results: dict[str, Any]) -> list[dict]:
    """The main arm's GRPO steps.json rows ([] when the run has no GRPO result)."""
    key = PlannedStage(MAIN_ARM, Stage.GRPO).key
    return read_json(join(results[key]["artifact"], "steps.json")) if key in results else []


def _grpo_section(rows: list[dict], window: int = 5) -> list[str]:
    """Training reward and pass rate of GRPO's first and last ``window`` steps: did RL move anything."""
    scored = [r for r in rows if "reward_mean" in r]
    if len(scored) < 2:
        return []
    w = max(1, min(window, len(scored) // 2))
    first, last = reward_windows(scored, window)
    passes = [r.get("pass_rate", float("nan")) for r in scored]
    p_first, p_last = sum(passes[:w]) / w, sum(passes[-w:]) / w
    zero = sum(r.get("zero_signal_groups", 0) for r in scored)
    return ["", "## GRPO training reward", "",
            f"{len(scored)} steps; means over the first and the last {w} steps ({zero} zero-signal groups in all).",
            "", f"| | first {w} steps | last {w} steps | change |", "|---|---:|---:|---:|",
            f"| reward | {first:.3f} | {last:.3f} | {last - first:+.3f} |",
            f"| pass rate | {p_first:.3f} | {p_last:.3f} | {p_last - p_first:+.3f} |"]


def _composition_section(evals: dict[str, dict]) -> list[str]:
    """Per model: composition rate, pairs, triples and pairs never seen together in the mid-training data."""
    comps = {arm: ev["composition"] for arm, ev in evals.items() if ev.get("composition")}
    if not comps:
        return []
    md = ["", "## Heuristic composition", "",
          "| model | chains | >= 2 heuristics | mean used | distinct pairs | distinct triples | with an unseen pair |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for arm, c in comps.items():
        u = c.get("unseen")
        unseen = f"{u['chains']} ({100 * u['rate']:.1f}%)" if u else "-"
        md.append(f"| {_label(arm)} | {c['chains']} | {100 * c['rate']:.1f}% | {c.get('mean_used', 0.0):.2f} | "
                  f"{c.get('distinct_pairs', '-')} | {c.get('distinct_triples', '-')} | {unseen} |")
    for arm, c in comps.items():
        md += ["", f"{_label(arm)}:", ""] + composition_markdown(c)
    return md


def _markdown(run, results: dict[str, Any], evals: dict[str, dict], plots: list[tuple[str, str]]) -> str:
    spec, ks = run.spec, run.spec.evaluation.k
    arms = ", ".join(str(a.name) for a in ARMS.values() if a.starts_from is None and a.enabled(spec))
    md = [f"# Polya run `{run.metadata.name}`", "",
          f"Model `{spec.model.name}`, dataset `{spec.dataset.source}`, "
          f"{len(spec.heuristics.selected_ids())} heuristics, arms: {arms}.", "", "## pass@k", "",
          "| model | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for arm, ev in evals.items():
        row = _headline(ev)
        md.append(f"| {_label(arm)} | " + " | ".join(f"{row[str(k)]:.2f}" for k in ks) + " |")
    md += _grpo_section(_grpo_rows(results))
    md += _composition_section(evals)
    md += ["", "## Stages", "", "| step | time | figures |", "|---|---:|---|"]
    for key, r in results.items():
        secs = "cached" if r.get("seconds") is None else f"{r['seconds']:.0f} s"
        figs = ", ".join(f"{k}={v:.4g}" for k, v in list(r["figures"].items())[:8] if isinstance(v, (int, float)))
        md.append(f"| {key} | {secs} | {figs} |")
    md += ["", "## Plots", ""] + [f"![{t}]({f})" for t, f in plots]
    md += ["", "## Configuration", "", "```yaml",
           yaml.safe_dump(run.model_dump(mode="json", exclude_none=True, exclude={"status"}), sort_keys=False).rstrip(),
           "```", ""]
    return "\n".join(md)


def build_report(run, results: dict[str, Any], out_dir: Path) -> Path:
    """``results``: step key ("arm/stage") -> {"artifact": its storage URI, "figures": {...}, "seconds": float|None}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    evals = {}
    for key, r in results.items():
        step = PlannedStage.parse(key)
        if step.stage == Stage.EVALUATE:
            evals[str(step.arm)] = read_json(join(r["artifact"], "eval.json"))
    plots = _plots(results, evals, out_dir)
    text = _markdown(run, results, evals, plots)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(_html(run.metadata.name, text))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    return out_dir / "report.md"


def _html(title: str, md: str) -> str:
    """A self-contained HTML rendering of the report's Markdown (tables, headings, images, code)."""
    out, in_code, in_table = [], False, False
    for line in md.splitlines():
        if line.startswith("```"):
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
            continue
        if in_code:
            out.append(html.escape(line))
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if all(set(c) <= set("-:") for c in cells):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("!["):
            alt, src = line[2:].split("](", 1)
            out.append(f'<figure><img src="{html.escape(src.rstrip(")"))}" alt="{html.escape(alt)}">'
                       f"<figcaption>{html.escape(alt)}</figcaption></figure>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px}img{max-width:100%}pre{background:#f6f6f6;padding:1em}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>" + "\n".join(out) + "</body></html>\n")
