"""A GRPO step's prompts reach every rollout replica: two real Serve replicas (transformers engine, tiny
model), one step's sampling through `generate_spread`, and each replica's own request counter."""
from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.slow


def test_a_step_keeps_both_replicas_busy(ray_session, tiny_model):
    from ray import serve

    from polya.engines.base import EngineConfig, Sampling
    from polya.serve.launch import start_rollout
    from polya.stages.grpo import generate_spread, replica_shares

    cfg = EngineConfig(model=str(tiny_model), kind="transformers", dtype="float32", max_model_len=256)
    handle = start_rollout(cfg, replicas=2, name="spread", route_prefix="/spread")
    try:
        def replicas_seen(tries: int = 40) -> dict[str, int]:
            """Each replica's prompt count: `info` goes to one replica per call, so ask until both answered."""
            seen: dict[str, int] = {}
            for _ in range(tries):
                info = handle.info.remote().result()
                seen[info["replica"]] = info["requests"]
                if len(seen) == 2:
                    break
            return seen

        # the handle's router learns the replica set from the controller asynchronously: once both have
        # answered it knows them (a GRPO stage's handle has answered the weight probe by its first step)
        assert replicas_seen() == dict.fromkeys(replicas_seen(), 0) and len(replicas_seen()) == 2
        prompts = [f"What is {i} + {i}?" for i in range(8)]
        groups = asyncio.run(generate_spread(handle, prompts, Sampling(max_tokens=4, n=2, seed=7, logprobs=False), 2))
        assert len(groups) == 8 and all(len(g) == 2 for g in groups)
        # in order: each group answers its own prompt
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(tiny_model))
        assert [g[0]["prompt_token_ids"] for g in groups] == [tok(p, add_special_tokens=False)["input_ids"]
                                                              for p in prompts]
        # the step went out as 2 concurrent calls of 4 prompts, which the rollout app's round-robin router
        # deals out in turn: 4 prompts each — one call would have left one replica idle
        assert replica_shares(8, 2) == [(0, 4), (4, 8)]
        seen = replicas_seen()
        assert sorted(seen.values()) == [4, 4], seen
    finally:
        serve.delete("spread")
