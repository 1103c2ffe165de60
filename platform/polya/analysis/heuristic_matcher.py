"""The embedding matcher: the CPU classifier of which catalogue heuristics a chain uses.

A chain is split into steps (sentences / lines); each step and each catalogue heuristic's name +
description are embedded with the sentence encoder. A heuristic counts as used when it is some step's
best match among all 64 heuristics and that step's cosine similarity to it is at least ``threshold``.
The decision is a pure function of the similarity matrix (`heuristics_used`), tested without a model.
The catalogue is always the whole one: the run's ``heuristics.count`` never enters.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from polya.heuristics import CATALOGUE, Heuristic, describe

_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_steps(chain: str, min_chars: int = 12) -> list[str]:
    return [s.strip() for s in _SPLIT.split(chain) if len(s.strip()) >= min_chars]


def heuristics_used(step_sims: np.ndarray, threshold: float) -> set[int]:
    """Indices of heuristics used, from a (steps x heuristics) cosine-similarity matrix."""
    if step_sims.size == 0:
        return set()
    best = step_sims.argmax(axis=1)
    return {int(h) for s, h in enumerate(best) if step_sims[s, h] >= threshold}


def match(chains: Sequence[str], threshold: float = 0.4, encoder: str | None = None,
          catalogue: Sequence[Heuristic] = CATALOGUE) -> list[set[str]]:
    """The catalogue ids each chain uses, by step-to-heuristic similarity."""
    from polya.analysis.embeddings import DEFAULT_ENCODER, embed

    if not chains:
        return []
    name = encoder or DEFAULT_ENCODER
    refs = embed([describe(h) for h in catalogue], name)
    steps = [split_steps(c) for c in chains]
    flat = [s for st in steps for s in st]
    vecs = embed(flat, name) if flat else np.zeros((0, refs.shape[1]), dtype=np.float32)
    used: list[set[str]] = []
    at = 0
    for st in steps:
        sims = vecs[at : at + len(st)] @ refs.T
        at += len(st)
        used.append({catalogue[i].id for i in heuristics_used(sims, threshold)})
    return used
