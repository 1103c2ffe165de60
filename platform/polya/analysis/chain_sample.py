"""Which chains the composition analysis reads: an even, seeded sample across benchmarks.

Each benchmark gets an equal share of the sample (round robin over benchmarks; a benchmark with fewer
chains than its share leaves the rest to the others). Within a benchmark, problems come in a seeded
random order and every problem gives one sample before any problem gives a second. Pure and
deterministic: the same pools, size and seed give the same picks.
"""
from __future__ import annotations

import random
from collections import deque
from typing import Mapping, Sequence

#: (pool name, problem index, sample index)
Pick = tuple[str, int, int]


def _queue(name: str, problems: Sequence[Sequence], rng: random.Random) -> deque[Pick]:
    order = list(range(len(problems)))
    rng.shuffle(order)
    samples = {p: rng.sample(range(len(problems[p])), len(problems[p])) for p in order}
    rounds = max((len(s) for s in samples.values()), default=0)
    return deque((name, p, samples[p][r]) for r in range(rounds) for p in order if r < len(samples[p]))


def even_sample(pools: Mapping[str, Sequence[Sequence]], total: int, seed: int) -> list[Pick]:
    """Up to ``total`` picks from ``pools`` (name -> per-problem lists of samples), an equal share each."""
    rng = random.Random(seed)
    queues = [_queue(name, problems, rng) for name, problems in pools.items()]
    picks: list[Pick] = []
    while len(picks) < total and any(queues):
        for q in queues:
            if q and len(picks) < total:
                picks.append(q.popleft())
    return picks


def subsample(items: Sequence, total: int, seed: int) -> list:
    """Up to ``total`` of ``items``, a seeded random choice kept in the items' order."""
    if len(items) <= total:
        return list(items)
    return [items[i] for i in sorted(random.Random(seed).sample(range(len(items)), total))]
