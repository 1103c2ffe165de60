"""Ray Serve reward-model app: ``POST /score`` and a handle API, both scoring heuristic adherence."""
from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, Field
from ray import serve

from polya.reward import ScoreItem, ScorerConfig, create_scorer

api = FastAPI(title="Polya reward model", version="v1")


class _RootWithoutSlash:
    """The app is mounted at /score: answer ``POST /score`` itself instead of redirecting to /score/."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope.get("root_path") and scope.get("path") == scope["root_path"]:
            scope = dict(scope, path=scope["path"] + "/")
        await self.app(scope, receive, send)


api.add_middleware(_RootWithoutSlash)


class ScoreRequestItem(BaseModel):
    text: str
    heuristic: str


class ScoreRequest(BaseModel):
    items: list[ScoreRequestItem] = Field(min_length=1, max_length=4096)


@serve.deployment(name="reward", max_ongoing_requests=64)
@serve.ingress(api)
class RewardServer:
    def __init__(self, scorer_cfg: ScorerConfig):
        self.kind = scorer_cfg.kind
        self.scorer = create_scorer(scorer_cfg)

    async def score(self, items: list[dict[str, str]]) -> dict[str, Any]:
        t0 = time.perf_counter()
        parsed = [ScoreItem(**it) for it in items]  # ValueError (-> 400) on an unknown heuristic
        scores = await self.scorer.score(parsed)
        return {"scores": scores, "kind": self.kind, "latency_s": time.perf_counter() - t0}

    @api.post("/")
    async def score_http(self, req: ScoreRequest) -> dict[str, Any]:
        try:
            return await self.score([it.model_dump() for it in req.items])
        except ValueError as exc:
            raise HTTPException(400, str(exc)) from None
