"""Ray Serve rollout app: replicas each holding an Engine, a handle API for stages and the OpenAI API.

Handle API (stages, learners):  ``await handle.generate.remote(prompts, Sampling(...))`` (or its dict) → per prompt a
list of completion dicts (text, token_ids, logprobs, finish_reason, prompt_tokens);
``handle.update_weights.remote(blob)``; ``handle.join_weight_group.remote(group)`` (the collective path
of `polya.rl.weight_sync`); ``handle.info.remote()``.

HTTP (people, harnesses, the `openai` client): ``GET /v1/models``, ``POST /v1/completions``,
``POST /v1/chat/completions``. On a vLLM engine they are answered by vLLM's own OpenAI serving layer over the
replica's `AsyncLLM` (`polya.serve.openai_api`: streaming, chat content parts, top-k logprobs, ``echo`` with
prompt logprobs, as `vllm serve` answers them); on the transformers fallback by a small hand-written subset
(`polya.serve.openai_fallback`). Either way a parameter the endpoint does not implement is a 400 naming it,
and a request over the configured max_tokens or n, or whose prompt + max_tokens exceeds the context, is a
400 with the reason.

Why not Ray Serve LLM (`ray.serve.llm.build_openai_app`)? It is the better OpenAI server for pure
serving, but RL needs three things its deployment does not expose: in-place weight reload inside the
vLLM workers (we call `reload_weights` through `collective_rpc`), token ids + sampled-token logprobs
through a Python handle without an HTTP hop, and the same code path for the transformers fallback.
Both apps use vLLM's own `AsyncLLM` and its OpenAI serving classes, so batching and the protocol are the same.
"""
from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
import ray
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from polya.engines.base import EngineConfig, Sampling, create_engine
from polya.serve.openai_api import Limits, RequestError, json_body

api = FastAPI(title="Polya rollout", version="v1")


@api.exception_handler(StarletteHTTPException)
async def _openai_error(request, exc: StarletteHTTPException) -> JSONResponse:
    """Errors in the OpenAI shape, so clients show the reason (an unknown route, a wrong method)."""
    return RequestError(str(exc.detail), status=exc.status_code).response()


@serve.deployment(name="rollout", max_ongoing_requests=256, health_check_period_s=10)
@serve.ingress(api)
class RolloutServer:
    async def __init__(self, engine_cfg: EngineConfig, max_tokens_limit: int = 4096, max_n: int = 64):
        self.cfg = engine_cfg
        self.engine = create_engine(self.cfg)
        self.max_tokens_limit = max_tokens_limit
        self.max_n = max_n
        limits = Limits(max_tokens=max_tokens_limit, n=max_n)
        if hasattr(self.engine, "engine_client"):  # vLLM: its own OpenAI serving layer over the same AsyncLLM
            from polya.serve.openai_api import VLLMOpenAI

            self.openai = await VLLMOpenAI.build(self.engine, limits)
        else:
            from polya.serve.openai_fallback import FallbackOpenAI

            self.openai = FallbackOpenAI(self.engine, limits, owned_by="polya")
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
            "tokens_out": self.tokens_out + self.openai.tokens_out,
            "node": ray.get_runtime_context().get_node_id(),  # the Ray node this replica runs on
        }

    # ------------------------------------------------------------------ OpenAI API
    async def _http(self, answer, request: Request) -> Response:
        self.requests += 1
        try:
            return await answer(await json_body(request), request)
        except RequestError as exc:
            return exc.response()

    @api.get("/v1/models")
    async def models(self) -> Response:
        return await self.openai.models()

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._http(self.openai.completions, request)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request) -> Response:
        return await self._http(self.openai.chat, request)

    async def check_health(self) -> None:
        # Serve replaces a replica whose engine died (vLLM's EngineCore process crashed)
        errored = getattr(getattr(self.engine, "engine_client", None), "errored", False)
        if errored:
            raise RuntimeError("rollout engine is dead")
