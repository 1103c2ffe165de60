"""PNG plots for reports (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping


def pyplot():
    """matplotlib's pyplot on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finish(plt, fig, ax, path: str | Path, title: str, grid_axis: str = "both") -> Path:
    """Title, grid, legend; save and close."""
    ax.set_title(title)
    ax.grid(True, axis=grid_axis, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def plot_pass_at_k(curves: Mapping[str, Mapping[int, float]], path: str | Path, title: str = "pass@k") -> Path:
    """One line per label (benchmark or model): pass@k (%) against k on a log2 axis."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, curve in curves.items():
        ks = sorted(curve)
        ax.plot(ks, [curve[k] for k in ks], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k (%)")
    ax.set_ylim(0, 100)
    return _finish(plt, fig, ax, path, title)


def plot_rewards(rows: list[dict], path: str | Path) -> Path:
    """GRPO's mean reward and pass rate per step (rows of a GRPO ``steps.json``)."""
    plt = pyplot()
    steps = [r["step"] for r in rows if "reward_mean" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [r["reward_mean"] for r in rows if "reward_mean" in r], marker="o", label="reward (mean)")
    ax.plot(steps, [r["pass_rate"] for r in rows if "pass_rate" in r], marker=".", label="pass rate")
    ax.set_xlabel("GRPO step")
    return _finish(plt, fig, ax, path, "GRPO reward")


def plot_reward_curves(curves: Mapping[str, list[list[float]]], path: str | Path,
                       title: str = "GRPO training reward") -> Path:
    """One line per label: the mean over seeds of each step's mean reward, the seeds' range shaded (``curves``:
    label -> one list of per-step rewards per seed, NaN where a seed skipped a step; the longest seed sets
    the steps)."""
    import numpy as np

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for label, runs in curves.items():
        steps = max(len(r) for r in runs)
        grid = np.full((len(runs), steps), np.nan)
        for i, r in enumerate(runs):
            grid[i, :len(r)] = r
        seen = ~np.isnan(grid).all(axis=0)
        if not seen.any():
            continue
        x, grid = np.arange(1, steps + 1)[seen], grid[:, seen]
        (line,) = ax.plot(x, np.nanmean(grid, axis=0), marker=".", label=f"{label} ({len(runs)} seeds)")
        if len(runs) > 1:
            ax.fill_between(x, np.nanmin(grid, axis=0), np.nanmax(grid, axis=0), color=line.get_color(), alpha=0.15)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward")
    return _finish(plt, fig, ax, path, title)


def plot_bar_pairs(values: Mapping[str, tuple[float, float]], path: str | Path, title: str,
                   labels: tuple[str, str]) -> Path:
    """Two bars per name (e.g. pass and keep rate per heuristic), on a 0-1 axis."""
    plt = pyplot()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * len(names) + 2), 3.8), dpi=120)
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [values[n][0] for n in names], width=0.4, label=labels[0])
    ax.bar([x + 0.2 for x in xs], [values[n][1] for n in names], width=0.4, label=labels[1])
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    return _finish(plt, fig, ax, path, title, grid_axis="y")
