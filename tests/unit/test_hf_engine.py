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
