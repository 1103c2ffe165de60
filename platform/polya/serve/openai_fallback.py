"""The rollout app's OpenAI API over an engine that is not vLLM (the transformers fallback): a small hand-written
subset, and a 400 naming every parameter outside it.

What it does: /v1/completions (a prompt or a list of prompts; ``logprobs: 0`` gives the sampled tokens' logprobs;
``return_token_ids`` as vLLM spells it), /v1/chat/completions (string content or ``text`` content parts),
``max_tokens``, ``temperature``, ``top_p``, ``n``, ``seed``. What it answers 400 for, instead of ignoring:
streaming, ``echo``, top-k logprobs (``logprobs`` > 0, chat ``logprobs``), stop strings (the transformers engine
does not apply them), penalties, and anything it does not know. Limits and error shapes are `polya.serve.openai_api`'s.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from polya.engines.base import Sampling, TokenLimitError
from polya.serve.openai_api import Limits, RequestError, request_fields, screen, validation_error

ENGINE = "the transformers engine this endpoint runs on"

#: parameters of the OpenAI API this subset knows but cannot honour: name -> (values it accepts, why not others)
COMPLETION_REFUSED = {
    "stream": ((False,), f"streaming is not supported by {ENGINE}; serve the model with the vLLM engine"),
    "echo": ((False,), f"echo (prompt logprobs) is not supported by {ENGINE}; serve the model with the vLLM engine"),
    "logprobs": ((0,), f"{ENGINE} returns the sampled tokens' logprobs only (logprobs=0), no top alternatives"),
    "stop": (("", []), f"stop strings are not applied by {ENGINE}"),
    "frequency_penalty": ((0, 0.0), f"penalties are not supported by {ENGINE}"),
    "presence_penalty": ((0, 0.0), f"penalties are not supported by {ENGINE}"),
    "logit_bias": (({},), f"logit_bias is not supported by {ENGINE}"),
}
CHAT_REFUSED = {
    **{k: v for k, v in COMPLETION_REFUSED.items() if k not in {"echo", "logprobs"}},
    "logprobs": ((False,), f"chat logprobs are not supported by {ENGINE}"),
    "top_logprobs": ((0,), f"top_logprobs is not supported by {ENGINE}"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CompletionBody(_Strict):
    model: str | None = None
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(default=16, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    user: str | None = None
    return_token_ids: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: str
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatBody(_Strict):
    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1)
    seed: int | None = None
    user: str | None = None
    return_token_ids: bool = False


def _parse(model, body: dict[str, Any], refused: dict[str, tuple[tuple, str]]):
    screen(body, request_fields(model), refused)
    try:
        return model.model_validate({k: v for k, v in body.items() if k not in refused})
    except ValidationError as exc:
        raise validation_error(exc) from None


class FallbackOpenAI:
    """/v1/models, /v1/completions, /v1/chat/completions over ``engine.generate``."""

    def __init__(self, engine, limits: Limits, owned_by: str):
        self.engine = engine
        self.limits = limits
        self.owned_by = owned_by
        self.tokens_out = 0

    async def models(self) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": self.engine.model_name, "object": "model", "created": 0, "owned_by": self.owned_by,
             "max_model_len": self.engine.max_model_len}]})

    def _check_model(self, name: str | None) -> None:
        if name and name != self.engine.model_name:
            raise RequestError(f"The model `{name}` does not exist. Valid aliases: {self.engine.model_name}.",
                               "model", 404)

    async def _run(self, prompts: list[str], s: Sampling):
        try:
            groups = await self.engine.generate(prompts, s)
        except TokenLimitError as exc:
            raise RequestError(str(exc), "max_tokens") from None
        self.tokens_out += sum(len(c.token_ids) for g in groups for c in g)
        return groups

    async def completions(self, body: dict[str, Any], raw: Request) -> Response:
        req = _parse(CompletionBody, body, COMPLETION_REFUSED)
        self._check_model(req.model)
        self.limits.check(req.max_tokens, req.n)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        s = Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=req.max_tokens, n=req.n,
                     seed=req.seed, logprobs=body.get("logprobs") is not None)
        groups = await self._run(prompts, s)
        flat = [c for g in groups for c in g]
        choices = [self._choice(i, c, req.return_token_ids, s.logprobs) for i, c in enumerate(flat)]
        return self._reply("cmpl", "text_completion", choices, groups)

    def _choice(self, index: int, c, token_ids: bool, logprobs: bool) -> dict[str, Any]:
        choice = {"index": index, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        if logprobs:
            tokens = [self.engine.tokenizer.decode([t]) for t in c.token_ids]
            offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            choice["logprobs"] = {"tokens": tokens, "token_logprobs": c.logprobs, "top_logprobs": None,
                                  "text_offset": offsets}
        if token_ids:
            choice |= {"token_ids": c.token_ids, "prompt_token_ids": c.prompt_token_ids}
        return choice

    async def chat(self, body: dict[str, Any], raw: Request) -> Response:
        req = _parse(ChatBody, body, CHAT_REFUSED)
        self._check_model(req.model)
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        max_tokens = req.max_completion_tokens or req.max_tokens
        self.limits.check(max_tokens, req.n, param)
        prompt = self.engine.apply_chat_template([{"role": m.role, "content": m.text()} for m in req.messages])
        if max_tokens is None:  # as vLLM: what the context leaves, at most the endpoint's limit
            room = self.engine.max_model_len - self.engine.count_tokens(prompt)
            max_tokens = max(1, min(self.limits.max_tokens, room))
        s = Sampling(temperature=req.temperature, top_p=req.top_p, max_tokens=max_tokens, n=req.n, seed=req.seed,
                     logprobs=False)
        groups = await self._run([prompt], s)
        choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                    "logprobs": None, **({"token_ids": c.token_ids} if req.return_token_ids else {})}
                   for i, c in enumerate(groups[0])]
        return self._reply("chatcmpl", "chat.completion", choices, groups)

    def _reply(self, prefix: str, kind: str, choices: list[dict[str, Any]], groups) -> Response:
        prompt_tokens = sum(g[0].prompt_tokens for g in groups if g)
        completion_tokens = sum(len(c.token_ids) for g in groups for c in g)
        return JSONResponse({
            "id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
            "model": self.engine.model_name, "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })
