"""The rollout app as people and harnesses use it: the `openai` client, 4xx on limits, concurrent load,
weight updates through the handle, a replica that dies mid-run, and the reward model's /score."""
from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.slow

from conftest import SERVE_PORT as PORT


@pytest.fixture(scope="module")
def rollout(ray_session, tiny_model):
    from ray import serve

    from polya.engines.base import EngineConfig
    from polya.serve.launch import start_rollout

    cfg = EngineConfig(model=str(tiny_model), kind="vllm", dtype="float32", max_model_len=512,
                       served_name="tiny", enforce_eager=True)
    handle = start_rollout(cfg, http_port=PORT, max_tokens_limit=128, name="endpoint-test", route_prefix="/")
    yield handle
    serve.delete("endpoint-test")


def test_openai_client(rollout):
    from openai import OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="none")
    assert [m.id for m in client.models.list().data] == ["tiny"]
    resp = client.completions.create(model="tiny", prompt="What is 2 + 2?", max_tokens=8, n=2, logprobs=0,
                                     extra_body={"return_token_ids": True})  # vLLM's extension, kept by the endpoint
    assert len(resp.choices) == 2 and resp.usage.completion_tokens > 0
    assert len(resp.choices[0].logprobs.token_logprobs) == len(resp.choices[0].model_extra["token_ids"])
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=8)
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 8


def test_limits_are_4xx_with_reason(rollout):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=f"http://127.0.0.1:{PORT}/v1", api_key="none", max_retries=0)
    with pytest.raises(BadRequestError, match="exceeds this endpoint's limit of 128"):
        client.completions.create(model="tiny", prompt="x", max_tokens=1000)
    with pytest.raises(BadRequestError, match="context length"):
        client.completions.create(model="tiny", prompt="7 " * 600, max_tokens=100)
    with pytest.raises(BadRequestError, match="n=65 exceeds this endpoint's limit of 64"):
        client.completions.create(model="tiny", prompt="x", max_tokens=2, n=65)
    r = httpx.post(f"http://127.0.0.1:{PORT}/v1/completions", json={"prompt": "x", "max_tokens": 0})
    assert r.status_code == 400 and "max_tokens" in r.text  # invalid values are 400s with the reason too
    r = httpx.post(f"http://127.0.0.1:{PORT}/v1/completions", json={"prompt": "x", "max_tokens": "many"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_64_concurrent_requests_zero_errors(rollout):
    async def load():
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            async def one(i):
                r = await client.post(f"http://127.0.0.1:{PORT}/v1/completions",
                                      json={"prompt": f"Question {i}: what is {i} + {i}?", "max_tokens": 16,
                                            "return_token_ids": True})
                return r.status_code, len(r.json()["choices"][0]["token_ids"])
            return await asyncio.gather(*[one(i) for i in range(64)])

    results = asyncio.run(asyncio.wait_for(load(), 300))
    assert [code for code, _ in results] == [200] * 64
    assert all(0 < n <= 16 for _, n in results)


def test_update_weights_changes_greedy_output(rollout, tiny_model):
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM

    greedy = {"temperature": 0.0, "max_tokens": 12, "n": 1, "seed": None, "logprobs": True, "top_p": 1.0, "stop": []}
    before = rollout.generate.remote(["The answer is"], greedy).result()[0][0]["token_ids"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    blob = safetensors.torch.save({k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"})
    info = rollout.update_weights.remote(blob).result()
    assert info["tensors"] > 0 and info["version"] == 1
    after = rollout.generate.remote(["The answer is"], greedy).result()[0][0]["token_ids"]
    assert after != before


def test_collective_sync_loads_the_same_weights_as_a_blob(rollout, tiny_model):
    """The learner-side broadcast (gloo here; NCCL on GPUs, same code) into the vLLM worker: greedy output
    after it equals greedy output after loading the same weights as a safetensors blob."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM

    from polya.rl.publisher import broadcast_weights_collective

    greedy = {"temperature": 0.0, "max_tokens": 12, "n": 1, "seed": None, "logprobs": True, "top_p": 1.0, "stop": []}

    def tokens():
        return rollout.generate.remote(["The answer is"], greedy).result()[0][0]["token_ids"]

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    original = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(11)
    moved = {k: (v + torch.randn(v.shape, generator=g) * 0.5).contiguous() for k, v in original.items()}
    start = rollout.info.remote().result()["weight_version"]
    rollout.update_weights.remote(safetensors.torch.save(original), start + 1).result()
    before = tokens()

    loaded = asyncio.run(broadcast_weights_collective(rollout, "endpoint-test", moved, start + 2, host="127.0.0.1",
                                                      bucket_mb=0.05, timeout_s=120))
    assert loaded == 1 and rollout.info.remote().result()["weight_version"] == start + 2
    by_group = tokens()
    assert by_group != before
    rollout.update_weights.remote(safetensors.torch.save(moved), start + 3).result()
    assert tokens() == by_group  # the blob path with the same weights samples the same greedy tokens


def test_dead_replica_is_replaced_and_batch_retried(rollout):
    import ray

    from polya.serve.launch import call_with_retry

    replica = next(a for a in ray.util.list_named_actors(all_namespaces=True)
                   if "endpoint-test" in a["name"] and "rollout" in a["name"] and "REPLICA" in a["name"].upper())
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    sampling = {"temperature": 1.0, "max_tokens": 8, "n": 2, "seed": None, "logprobs": True, "top_p": 1.0, "stop": []}
    out = asyncio.run(call_with_retry(rollout.generate, ["a", "b", "c"], sampling, retries=10, backoff_s=3))
    assert [len(g) for g in out] == [2, 2, 2]


def test_reward_score_endpoint(ray_session):
    from ray import serve

    from polya.reward import ScorerConfig
    from polya.serve.launch import start_reward

    handle = start_reward(ScorerConfig(), http_port=PORT)
    try:
        text = "Start from the end: the final amount is 20, so before doubling it was 10, and before that 13."
        r = httpx.post(f"http://127.0.0.1:{PORT}/score", timeout=60, json={"items": [
            {"text": text, "heuristic": "work-backwards"}, {"text": text, "heuristic": "pigeonhole"}]})
        assert r.status_code == 200
        s = r.json()["scores"]
        assert s[0] > s[1]  # working backwards describes this trace better than the pigeonhole principle
        bad = httpx.post(f"http://127.0.0.1:{PORT}/score", json={"items": [{"text": "x", "heuristic": "nope"}]})
        assert bad.status_code == 400 and "unknown heuristic" in bad.text
        assert handle.score.remote([{"text": text, "heuristic": "analogy"}]).result()["kind"] == "embedding"
    finally:
        serve.delete("reward")
