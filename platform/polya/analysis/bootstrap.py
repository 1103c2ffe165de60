"""Bootstrap intervals for a sweep's figures: means over problems and seeds, resampled over both (pure).

A figure (pass@k of one model on a set of benchmarks) is the mean over benchmarks of each benchmark's mean
over seeds and problems of the per-problem estimate. Its interval resamples what varies between repeats of
the experiment: the seeds (with replacement, the same draw for every benchmark: a seed is one whole
training run) and, within each benchmark, the problems (with replacement, the same draw for every seed: the
seeds answered the same problems). The percentile interval of the resampled figures is reported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.mean:.1f} [{self.low:.1f}, {self.high:.1f}]"


def figure(blocks: Sequence[np.ndarray]) -> float:
    """Mean over blocks (benchmarks) of each (seeds x problems) block's mean."""
    return float(np.mean([b.mean() for b in blocks]))


def bootstrap(blocks: Sequence[np.ndarray], resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
              chunk: int = 256) -> Interval:
    """`figure` of ``blocks`` (each (seeds, problems), every block with the same seeds) with its percentile
    interval over ``resamples`` draws of seeds and problems."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks]
    if not blocks or any(b.ndim != 2 or b.size == 0 for b in blocks):
        raise ValueError("every block must be a non-empty (seeds, problems) array")
    seeds = blocks[0].shape[0]
    if any(b.shape[0] != seeds for b in blocks):
        raise ValueError(f"every block needs the same seeds, got {[b.shape[0] for b in blocks]}")
    if not 0.5 < confidence < 1.0:
        raise ValueError("confidence must be in (0.5, 1)")
    rng = np.random.default_rng(seed)
    stats = np.empty(resamples)
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        si = rng.integers(0, seeds, size=(n, seeds))
        total = np.zeros(n)
        for b in blocks:
            qi = rng.integers(0, b.shape[1], size=(n, b.shape[1]))
            # mean over the drawn seeds of the mean over the drawn problems: row means first (cheap)
            per_seed = np.take_along_axis(b[si], qi[:, None, :].repeat(seeds, axis=1), axis=2).mean(axis=2)
            total += per_seed.mean(axis=1)
        stats[start : start + n] = total / len(blocks)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return Interval(figure(blocks), float(low), float(high))
