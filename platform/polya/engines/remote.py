"""OpenAI-compatible remote client engine (a Polya rollout endpoint, vLLM's server, any compatible API).

`cfg.model` is the base URL (``http://host:8000/v1``), `cfg.served_name` the model name to request.
Token ids come back only from servers that return them (a Polya endpoint does, in ``polya_token_ids``);
logprobs come from the standard ``logprobs`` field. Weight updates are not possible through this API.
"""
from __future__ import annotations

import asyncio

from polya.engines.base import Completion, EngineConfig, Sampling


class OpenAIEngine:
    def __init__(self, cfg: EngineConfig, concurrency: int = 32):
        from openai import AsyncOpenAI

        self.cfg = cfg
        self.client = AsyncOpenAI(base_url=cfg.model, api_key=cfg.api_key or "EMPTY", max_retries=3, timeout=600)
        self.model_name = cfg.served_name or "default"
        self.max_model_len = cfg.max_model_len
        self._sem = asyncio.Semaphore(concurrency)

    def count_tokens(self, text: str) -> int:
        return len(text) // 4  # a bound for logging only; the server enforces its own limits

    def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
        raise NotImplementedError("remote engines take chat messages through the server's own template")

    async def _one(self, prompt: str, s: Sampling) -> list[Completion]:
        async with self._sem:
            resp = await self.client.completions.create(
                model=self.model_name,
                prompt=prompt,
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed,
                logprobs=0 if s.logprobs else None,
                stop=list(s.stop) or None,
            )
        out = []
        for choice in sorted(resp.choices, key=lambda c: c.index):
            extra = getattr(choice, "model_extra", None) or {}
            lps = list(choice.logprobs.token_logprobs) if choice.logprobs and choice.logprobs.token_logprobs else None
            out.append(
                Completion(
                    text=choice.text,
                    token_ids=list(extra.get("polya_token_ids") or []),
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
