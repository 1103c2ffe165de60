"""The transformers fallback engine (real transformers on a tiny model): shapes, logprobs, weight updates."""
from __future__ import annotations

import asyncio

import pytest

from polya.engines.base import EngineConfig, Sampling, TokenLimitError, create_engine


@pytest.fixture(scope="module")
def engine(tiny_model):
    return create_engine(EngineConfig(model=str(tiny_model), kind="transformers", dtype="float32", max_model_len=512))


def test_generate_n_with_logprobs(engine):
    groups = asyncio.run(engine.generate(["What is 1 + 1?", "Hi"], Sampling(max_tokens=6, n=3, seed=1)))
    assert [len(g) for g in groups] == [3, 3]
    for g in groups:
        for c in g:
            assert 0 < len(c.token_ids) <= 6 and len(c.logprobs) == len(c.token_ids)
            assert all(lp <= 0 for lp in c.logprobs)
            assert c.finish_reason in ("stop", "length") and c.prompt_tokens > 0


def test_token_limit(engine):
    with pytest.raises(TokenLimitError, match="context length"):
        asyncio.run(engine.generate(["7 " * 600], Sampling(max_tokens=8)))


def test_update_weights_changes_greedy_output(engine):
    import safetensors.torch
    import torch

    greedy = Sampling(temperature=0.0, max_tokens=8)
    before = asyncio.run(engine.generate(["The answer is"], greedy))[0][0].token_ids
    state = {k: (v + torch.randn_like(v) * 0.5).contiguous() for k, v in engine.model.state_dict().items()
             if k != "lm_head.weight"}
    n = asyncio.run(engine.update_weights(safetensors.torch.save(state)))
    assert n == len(state) and engine.weight_version == 1
    after = asyncio.run(engine.generate(["The answer is"], greedy))[0][0].token_ids
    assert after != before


class _LocalHandle:
    """The rollout handle's shape (``handle.generate.remote(prompts, sampling)`` → awaitable) over a real
    engine in this process, as a Serve replica calls it: stands in for Ray Serve's routing only."""

    def __init__(self, engine):
        self.generate = self
        self._engine = engine

    def remote(self, prompts, sampling):
        from dataclasses import asdict

        async def call():
            return [[asdict(c) for c in g] for g in await self._engine.generate(prompts, sampling)]

        return call()


def test_chunked_generation_gives_every_prompt_its_own_seed(tiny_model):
    """`generate_all` splits a batch into calls; each call's seeds start at its first prompt's index, so the
    completions are those of one call over the whole batch, and the same prompt at two places in the batch
    gets two samples (before, every call restarted at the same seed: prompt 2 repeated prompt 0's sample)."""
    from polya.engines.hf_engine import HFEngine
    from polya.stages.common import generate_all

    eng = HFEngine(EngineConfig(model=str(tiny_model), kind="transformers", dtype="float32", max_model_len=512),
                   batch_size=2)
    prompts = ["a b c", "d e", "a b c", "d e"]
    s = Sampling(temperature=1.0, max_tokens=12, seed=7)
    one_call = asyncio.run(eng.generate(prompts, s))
    chunked, _ = asyncio.run(generate_all(_LocalHandle(eng), prompts, s, chunk=2, concurrency=1))
    assert [g[0]["token_ids"] for g in chunked] == [g[0].token_ids for g in one_call]
    assert chunked[0][0]["token_ids"] != chunked[2][0]["token_ids"]
