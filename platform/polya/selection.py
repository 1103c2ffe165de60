"""Which self-generated traces become SFT data (pure logic, no I/O).

* ``heuristic`` mode: for every (question, heuristic), the correct trace the reward model judges most
  faithful to its heuristic (ties: lowest sample index). ``keep_incorrect`` = f admits, in addition, a
  seeded random fraction f of the (question, heuristic) groups' best incorrect traces — the ablation
  that shows incorrect-but-diverse traces hurt.
* ``star`` mode (STaR baseline): one correct trace per question, heuristic ignored: the most adherent if
  scores exist, else the first by sample index.
* ``keep="incorrect"`` (the paper's incorrect-trace ablation): the same groups, but each keeps its most
  adherent *incorrect* trace and no correct one; ``incorrect_per_question`` = m keeps, per question, a seeded
  sample of m of those groups (m incorrect approaches per question; all of them by default). The sample for
  a question depends only on the seed and the question (one seeded shuffle of its groups, of which the first m
  are kept), so an arm with m = 2 keeps a subset of the m = 3 arm's traces and a rerun keeps the same ones.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Iterable

from polya.recipe import STAR_SELECTION


@dataclass(frozen=True)
class Candidate:
    index: int
    question_id: str
    heuristic_id: str
    sample_index: int
    correct: bool
    adherence: float | None = None

    def rank(self) -> tuple[float, int]:
        score = -math.inf if self.adherence is None or math.isnan(self.adherence) else self.adherence
        return (-score, self.sample_index)


def _best(group: list[Candidate]) -> Candidate:
    return min(group, key=Candidate.rank)


def _incorrect_only(groups: dict[tuple[str, str], list[Candidate]], per_question: int | None, seed: int) -> list[int]:
    picks: dict[str, list[Candidate]] = {}
    for key in sorted(groups):
        wrong = [c for c in groups[key] if not c.correct]
        if wrong:
            picks.setdefault(key[0], []).append(_best(wrong))
    kept: list[int] = []
    for question in sorted(picks):
        chosen = picks[question]
        if per_question is not None and len(chosen) > per_question:
            order = list(chosen)  # one seeded shuffle per question: m = 2's choice is a prefix of m = 3's
            random.Random(f"{seed}:{question}").shuffle(order)
            chosen = order[:per_question]
        kept.extend(c.index for c in chosen)
    return sorted(kept)


def select(cands: Iterable[Candidate], mode: str = "heuristic", keep_incorrect: float = 0.0,
           seed: int = 0, keep: str = "correct", incorrect_per_question: int | None = None) -> list[int]:
    """Indices of the kept candidates, in input order."""
    cands = list(cands)
    if not 0.0 <= keep_incorrect <= 1.0:
        raise ValueError("keep_incorrect must be in [0, 1]")
    if keep not in ("correct", "incorrect"):
        raise ValueError(f"keep must be 'correct' or 'incorrect', got {keep!r}")
    if incorrect_per_question is not None and incorrect_per_question < 1:
        raise ValueError("incorrect_per_question must be >= 1")
    groups: dict[tuple[str, str], list[Candidate]] = {}
    for c in cands:
        key = (c.question_id, "" if mode == STAR_SELECTION else c.heuristic_id)
        groups.setdefault(key, []).append(c)
    if keep == "incorrect":
        return _incorrect_only(groups, incorrect_per_question, seed)
    kept: list[int] = []
    incorrect_best: list[Candidate] = []
    for key in sorted(groups):
        group = groups[key]
        correct = [c for c in group if c.correct]
        if correct:
            kept.append(_best(correct).index)
        wrong = [c for c in group if not c.correct]
        if wrong and mode == "heuristic":
            incorrect_best.append(_best(wrong))
    if keep_incorrect > 0 and incorrect_best:
        rng = random.Random(seed)
        chosen = rng.sample(incorrect_best, k=round(keep_incorrect * len(incorrect_best)))
        kept.extend(c.index for c in chosen)
    return sorted(kept)
