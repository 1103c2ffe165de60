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

from polya.analysis.plots import _plt, plot_pass_at_k

ARM_LABELS = {"base": "base model", "polya-sft": "mid-trained (SFT)", "polya": "Polya (SFT + GRPO)",
              "vanilla": "vanilla GRPO", "star": "STaR + GRPO"}


def _bar(values: dict[str, tuple[float, float]], path: Path, title: str, labels: tuple[str, str]) -> Path:
    plt = _plt()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.8), dpi=120)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [values[n][0] for n in names], width=0.4, label=labels[0])
    ax.bar([x + 0.2 for x in xs], [values[n][1] for n in names], width=0.4, label=labels[1])
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def build_report(run, results: dict[str, Any], out_dir: Path) -> Path:
    """``results``: step key ("arm/stage") -> {"artifact": local folder, "figures": {...}, "seconds": float|None}."""
    from polya.stages.grpo import plot_rewards

    out_dir.mkdir(parents=True, exist_ok=True)
    spec = run.spec
    evals = {key.split("/")[0]: json.loads((Path(r["artifact"]) / "eval.json").read_text())
             for key, r in results.items() if key.endswith("/evaluate")}
    ks = spec.evaluation.k
    plots: list[tuple[str, str]] = []

    # pass@k: one line per arm (the benchmark average, or the only benchmark)
    curves = {}
    for arm, ev in evals.items():
        table = ev["pass_at_k"]
        row = table.get("average") or next(iter(table.values()))
        curves[ARM_LABELS.get(arm, arm)] = {int(k): v for k, v in row.items()}
    if curves:
        plot_pass_at_k(curves, out_dir / "passk.png", title="pass@k by model")
        plots.append(("pass@k against k", "passk.png"))
    grpo_key = next((k for k in results if k == "polya/grpo"), None)
    if grpo_key:
        rows = json.loads((Path(results[grpo_key]["artifact"]) / "steps.json").read_text())
        plot_rewards(rows, out_dir / "grpo_reward.png")
        plots.append(("GRPO reward curve", "grpo_reward.png"))
    if "polya/filter" in results:
        per_h = json.loads((Path(results["polya/filter"]["artifact"]) / "per_heuristic.json").read_text())
        _bar({h: (d["pass_rate"], d["keep_rate"]) for h, d in per_h.items()}, out_dir / "heuristics.png",
             "per-heuristic pass and keep rates", ("pass rate", "keep rate"))
        plots.append(("per-heuristic pass and keep rates", "heuristics.png"))
    comp = {ARM_LABELS.get(a, a): ev["composition"]["rate"] for a, ev in evals.items() if ev.get("composition")}
    if comp:
        before = comp.get(ARM_LABELS["polya-sft"], comp.get(ARM_LABELS["base"], 0.0))
        after = comp.get(ARM_LABELS["polya"], 0.0)
        _bar({"composition rate": (before, after)}, out_dir / "composition.png",
             "chains combining >= 2 heuristics", ("before RL", "after RL"))
        plots.append(("composition rate before and after RL", "composition.png"))

    md = [f"# Polya run `{run.metadata.name}`", "",
          f"Model `{spec.model.name}`, dataset `{spec.dataset.source}`, "
          f"{len(spec.heuristics.selected_ids())} heuristics, arms: base, polya"
          + "".join(f", {b}" for b in spec.baselines) + ".", "", "## pass@k", "",
          "| model | " + " | ".join(f"pass@{k}" for k in ks) + " |", "|---|" + "---:|" * len(ks)]
    for arm, ev in evals.items():
        table = ev["pass_at_k"]
        row = table.get("average") or next(iter(table.values()))
        md.append(f"| {ARM_LABELS.get(arm, arm)} | " + " | ".join(f"{row[str(k)]:.2f}" for k in ks) + " |")
    md += ["", "## Stages", "", "| step | time | figures |", "|---|---:|---|"]
    for key, r in results.items():
        secs = "cached" if r.get("seconds") is None else f"{r['seconds']:.0f} s"
        figs = ", ".join(f"{k}={v:.4g}" for k, v in list(r["figures"].items())[:8] if isinstance(v, (int, float)))
        md.append(f"| {key} | {secs} | {figs} |")
    md += ["", "## Plots", ""] + [f"![{t}]({f})" for t, f in plots]
    md += ["", "## Configuration", "", "```yaml",
           yaml.safe_dump(run.model_dump(mode="json", exclude_none=True, exclude={"status"}), sort_keys=False).rstrip(),
           "```", ""]
    text = "\n".join(md)
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
