"""Heuristic-composition analysis: which catalogue heuristics a reasoning chain uses, and how often a
chain combines two or more of them (the figure that rises from 23% to 57% with RL in the reference run).

The embedding classifier splits a chain into steps (sentences / lines), embeds each step and each
heuristic's name + description, and counts a heuristic as used when some step's cosine similarity to it
is at least ``threshold`` and it is the step's best match. The decision is a pure function of the
similarity matrix, so it is tested without a model.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from polya.heuristics import Heuristic, describe

_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def split_steps(chain: str, min_chars: int = 12) -> list[str]:
    return [s.strip() for s in _SPLIT.split(chain) if len(s.strip()) >= min_chars]


def heuristics_used(step_sims: np.ndarray, threshold: float) -> set[int]:
    """Indices of heuristics used, from a (steps x heuristics) cosine-similarity matrix."""
    if step_sims.size == 0:
        return set()
    best = step_sims.argmax(axis=1)
    return {int(h) for s, h in enumerate(best) if step_sims[s, h] >= threshold}


def composition_rate(used: list[set]) -> float:
    """Share (0-1) of chains that use two or more heuristics."""
    return float(np.mean([len(u) >= 2 for u in used])) if used else 0.0


@dataclass
class CompositionReport:
    chains: int
    rate: float  # share of chains with >= 2 heuristics
    mean_used: float
    usage: dict[str, int]  # heuristic id -> chains using it

    def to_dict(self) -> dict:
        return {"chains": self.chains, "rate": self.rate, "mean_used": self.mean_used, "usage": self.usage}


def analyse(chains: list[str], heuristics: list[Heuristic], threshold: float = 0.35,
            encoder: str | None = None) -> CompositionReport:
    from polya.analysis.embeddings import DEFAULT_ENCODER, embed

    name = encoder or DEFAULT_ENCODER
    refs = embed([describe(h) for h in heuristics], name)
    steps = [split_steps(c) for c in chains]
    flat = [s for st in steps for s in st]
    vecs = embed(flat, name) if flat else np.zeros((0, refs.shape[1]), dtype=np.float32)
    used: list[set[int]] = []
    at = 0
    for st in steps:
        sims = vecs[at : at + len(st)] @ refs.T
        at += len(st)
        used.append(heuristics_used(sims, threshold))
    usage = {h.id: sum(1 for u in used if i in u) for i, h in enumerate(heuristics)}
    return CompositionReport(
        chains=len(chains), rate=composition_rate(used),
        mean_used=float(np.mean([len(u) for u in used])) if used else 0.0, usage=usage,
    )


# ------------------------------------------------------------------------------ judge classifier
JUDGE_PROMPT = (
    "Here is a solution to a math problem, and a numbered list of problem-solving approaches.\n\n"
    "Approaches:\n{listing}\n\nSolution:\n{chain}\n\n"
    "Which approaches does the solution actually use? Answer with their numbers, comma-separated "
    "(for example: 2, 5), or 'none'."
)


def judge_prompt(chain: str, heuristics: list[Heuristic]) -> str:
    listing = "\n".join(f"{i + 1}. {describe(h)}" for i, h in enumerate(heuristics))
    return JUDGE_PROMPT.format(listing=listing, chain=chain[-6000:])


def parse_judge_ids(text: str, n: int) -> set[int]:
    """0-based indices of the approaches a judge named (numbers outside 1..n are ignored)."""
    if re.match(r"\s*none\b", text, re.I):
        return set()
    head = text.strip().splitlines()[0] if text.strip() else ""
    return {int(x) - 1 for x in re.findall(r"\b(\d{1,2})\b", head) if 1 <= int(x) <= n}


async def analyse_with_judge(chains: list[str], heuristics: list[Heuristic], engine) -> CompositionReport:
    """The same report, with a generative judge (an Engine) naming the heuristics each chain uses."""
    from polya.engines.base import Sampling

    prompts = [engine.apply_chat_template([{"role": "user", "content": judge_prompt(c, heuristics)}]) for c in chains]
    groups = await engine.generate(prompts, Sampling(temperature=0.0, max_tokens=24, logprobs=False))
    used = [parse_judge_ids(g[0].text, len(heuristics)) for g in groups]
    usage = {h.id: sum(1 for u in used if i in u) for i, h in enumerate(heuristics)}
    return CompositionReport(chains=len(chains), rate=composition_rate(used),
                             mean_used=float(np.mean([len(u) for u in used])) if used else 0.0, usage=usage)
