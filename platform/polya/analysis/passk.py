"""The unbiased pass@k estimator (Chen et al., 2021) and its aggregation over problems and benchmarks."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c of n correct.

    = 1 - C(n-c, k) / C(n, k), computed as a product to stay exact for n up to thousands.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got n={n}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], ks: Sequence[int]) -> dict[int, float]:
    """Mean pass@k over problems given (n, c) per problem, for every k (in percent)."""
    counts = list(counts)
    if not counts:
        return {k: float("nan") for k in ks}
    return {k: 100.0 * float(np.mean([pass_at_k(n, c, k) for n, c in counts])) for k in ks}
