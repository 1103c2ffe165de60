"""Ray Serve rollout app: replicas each holding an Engine, a handle API for stages and the OpenAI API.

Handle API (stages, learners):  ``await handle.generate.remote(prompts, Sampling(...))`` (or its dict) → per prompt a
list of completion dicts (text, token_ids, logprobs, finish_reason, prompt_tokens);
``handle.update_weights.remote(blob)``; ``handle.join_weight_group.remote(group)`` (the collective path
of `polya.rl.weight_sync`); ``handle.info.remote()``.

HTTP (people, harnesses, the `openai` client): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions``. A request whose prompt + max_tokens exceeds the context, or that asks
for more than the configured max_tokens or n, gets a 400 with the reason.

Why not Ray Serve LLM (`ray.serve.llm.build_openai_app`)? It is the better OpenAI server for pure
serving, but RL needs three things its deployment does not expose: in-place weight reload inside the
vLLM workers (we call `reload_weights` through `collective_rpc`), token ids + sampled-token logprobs
through a Python handle without an HTTP hop, and the same code path for the transformers fallback.
Both apps use vLLM's own `AsyncLLM`, so continuous batching is the same.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
import ray
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from polya.engines.base import EngineConfig, Sampling, TokenLimitError, create_engine

api = FastAPI(title="Polya rollout", version="v1")


@api.exception_handler(StarletteHTTPException)
async def _openai_error(request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors in the OpenAI shape, so clients show the reason (`openai.BadRequestError: ... limit of 128`)."""
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return JSONResponse({"error": {"message": exc.detail, "type": kind, "code": exc.status_code}},
                        status_code=exc.status_code)


class CompletionRequest(BaseModel):
    model: str | None = None
    prompt: str | list[str]
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    logprobs: int | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None


class ChatMessage(BaseModel):
    role: str
    content: str


class ChatRequest(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    stop: str | list[str] | None = None


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


@serve.deployment(name="rollout", max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress(api)
class RolloutServer:
    def __init__(self, engine_cfg: EngineConfig, max_tokens_limit: int = 4096, max_n: int = 64):
        self.cfg = engine_cfg
        self.engine = create_engine(self.cfg)
        self.max_tokens_limit = max_tokens_limit
        self.max_n = max_n
        self.replica_id = uuid.uuid4().hex[:8]
        self.tokens_out = 0
        self.requests = 0
        self.version = 0  # weight version: 0 = the weights the replica started from
        self._joined = 0  # the last weight-sync group version this replica claimed a rank in
        self._receiving: set = set()  # background receive tasks (a reference keeps them alive)

    # ------------------------------------------------------------------ handle API
    async def generate(self, prompts: list[str], sampling: Sampling | dict[str, Any]) -> list[list[dict[str, Any]]]:
        s = sampling if isinstance(sampling, Sampling) else Sampling.from_dict(sampling)
        groups = await self.engine.generate(list(prompts), s)
        self.requests += len(prompts)
        self.tokens_out += sum(len(c.token_ids) for g in groups for c in g)
        return [[asdict(c) for c in g] for g in groups]

    async def update_weights(self, blob: bytes, version: int | None = None) -> dict[str, Any]:
        """Load new weights. With ``version``, a replica already at that version skips the load, so a
        caller can repeat the call until every replica has answered (Serve routes each call to one)."""
        if version is not None and version <= self.version:
            return {"replica": self.replica_id, "tensors": 0, "version": self.version, "skipped": True}
        import ray

        if isinstance(blob, ray.ObjectRef):  # broadcast_weights puts the blob in the object store once
            blob = await blob
        n = await self.engine.update_weights(blob)
        self.version = version if version is not None else self.version + 1
        return {"replica": self.replica_id, "tensors": n, "version": self.version, "skipped": False}

    async def join_weight_group(self, group: Any) -> dict[str, Any]:
        """Claim a rank in the learner's weight-sync group for ``group['version']`` and start receiving in
        the background; answers at once (the learner broadcasts once every replica has joined). A replica
        asked again for a version it joined, or whose group is already full, answers ``rank: None``."""
        import asyncio

        from polya.rl.weight_sync import GroupSpec, claim_rank, open_store

        spec = group if isinstance(group, GroupSpec) else GroupSpec.from_dict(group)
        if spec.version <= self._joined:
            return {"replica": self.replica_id, "rank": None}
        store = await asyncio.to_thread(open_store, spec.host, spec.port, False, spec.timeout_s)
        rank = await asyncio.to_thread(claim_rank, spec, store)
        if rank is None:
            return {"replica": self.replica_id, "rank": None}
        self._joined = spec.version
        task = asyncio.create_task(self._receive(spec, store, rank))
        self._receiving.add(task)
        task.add_done_callback(self._receiving.discard)
        return {"replica": self.replica_id, "rank": rank}

    async def _receive(self, spec, store, rank: int) -> None:
        import asyncio

        from polya.rl.weight_sync import report

        try:
            # plain data from here on: the vLLM engine hands it to its worker processes
            await self.engine.receive_weights(spec.to_dict(), rank)
            self.version = spec.version
            await asyncio.to_thread(report, store, spec, rank)
        except Exception as exc:  # noqa: BLE001 - the learner waits on the store: tell it why
            await asyncio.to_thread(report, store, spec, rank, f"replica {self.replica_id}: {type(exc).__name__}: {exc}")

    async def info(self) -> dict[str, Any]:
        return {
            "replica": self.replica_id,
            "model": self.engine.model_name,
            "kind": self.cfg.resolved_kind(),
            "max_model_len": self.engine.max_model_len,
            "weight_version": self.version,
            "requests": self.requests,
            "tokens_out": self.tokens_out,
            "node": ray.get_runtime_context().get_node_id(),  # the Ray node this replica runs on
        }

    # ------------------------------------------------------------------ OpenAI API
    def _limits(self, max_tokens: int, n: int) -> None:
        if max_tokens > self.max_tokens_limit:
            raise HTTPException(400, f"max_tokens={max_tokens} exceeds this endpoint's limit of {self.max_tokens_limit}")
        if n > self.max_n:
            raise HTTPException(400, f"n={n} exceeds this endpoint's limit of {self.max_n}")

    async def _run(self, prompts: list[str], s: Sampling):
        try:
            return await self.engine.generate(prompts, s)
        except TokenLimitError as exc:
            raise HTTPException(400, str(exc)) from None

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": self.engine.model_name, "object": "model", "created": 0, "owned_by": "polya",
                      "max_model_len": self.engine.max_model_len}],
        }

    @api.post("/v1/completions")
    async def completions(self, req: CompletionRequest) -> dict[str, Any]:
        self._limits(req.max_tokens, req.n)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        s = Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens, n=req.n,
                     seed=req.seed, logprobs=req.logprobs is not None, stop=_stops(req.stop))
        groups = await self._run(prompts, s)
        choices, completion_tokens, prompt_tokens = [], 0, 0
        for g in groups:
            prompt_tokens += g[0].prompt_tokens if g else 0
            for c in g:
                completion_tokens += len(c.token_ids)
                choice = {"index": len(choices), "text": c.text, "finish_reason": c.finish_reason,
                          "logprobs": None, "polya_token_ids": c.token_ids}
                if c.logprobs is not None:
                    choice["logprobs"] = {"token_logprobs": c.logprobs, "tokens": None, "top_logprobs": None,
                                          "text_offset": None}
                choices.append(choice)
        self.requests += 1
        self.tokens_out += completion_tokens
        return {
            "id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": self.engine.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }

    @api.post("/v1/chat/completions")
    async def chat(self, req: ChatRequest) -> dict[str, Any]:
        max_tokens = req.max_completion_tokens or req.max_tokens or 256
        self._limits(max_tokens, req.n)
        prompt = self.engine.apply_chat_template([m.model_dump() for m in req.messages])
        s = Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, n=req.n,
                     seed=req.seed, logprobs=False, stop=_stops(req.stop))
        (group,) = await self._run([prompt], s)
        completion_tokens = sum(len(c.token_ids) for c in group)
        self.requests += 1
        self.tokens_out += completion_tokens
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.engine.model_name,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.text},
                         "finish_reason": c.finish_reason} for i, c in enumerate(group)],
            "usage": {"prompt_tokens": group[0].prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": group[0].prompt_tokens + completion_tokens},
        }

    async def check_health(self) -> None:
        # Serve replaces a replica whose engine died (vLLM's EngineCore process crashed)
        errored = getattr(getattr(self.engine, "_engine", None), "errored", False)
        if errored:
            raise RuntimeError("rollout engine is dead")
