"""The rollout endpoint speaks the OpenAI API as clients use it: the `openai` package against a real Serve app
on vLLM (CPU) — streaming, content parts, top-k logprobs, prompt log-likelihoods that match the learner's own
logprobs, a 400 naming every parameter the server does not implement — and the same app's transformers
fallback, which answers 400 for what it cannot do."""
from __future__ import annotations

import httpx
import pytest

from conftest import SERVE_PORT as PORT

pytestmark = pytest.mark.slow

APP = "openai-protocol"
HF_PREFIX = "/hf"
URL = f"http://127.0.0.1:{PORT}/v1"
PROMPT = "What is 12 + 30? The answer is"


@pytest.fixture(scope="module")
def rollout(ray_session, tiny_model):
    from ray import serve

    from polya.engines.base import EngineConfig
    from polya.serve.launch import start_rollout

    cfg = EngineConfig(model=str(tiny_model), kind="vllm", dtype="float32", max_model_len=512,
                       served_name="tiny", enforce_eager=True)
    handle = start_rollout(cfg, http_port=PORT, max_tokens_limit=128, name=APP, route_prefix="/")
    yield handle
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(rollout):
    from openai import OpenAI

    return OpenAI(base_url=URL, api_key="none", max_retries=0, timeout=120)


def _greedy(**extra):
    return {"model": "tiny", "max_tokens": 12, "temperature": 0.0, "extra_body": {"ignore_eos": True, **extra}}


def test_completion_streams_token_by_token(client):
    whole = client.completions.create(prompt=PROMPT, **_greedy())
    chunks = [c.choices[0].text for c in client.completions.create(prompt=PROMPT, stream=True, **_greedy())
              if c.choices]
    assert len([c for c in chunks if c]) > 1
    assert "".join(chunks) == whole.choices[0].text and whole.usage.completion_tokens == 12


def test_chat_streams_content_parts_token_by_token(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is "}, {"type": "text", "text": "2 + 2?"}]}]
    plain = [{"role": "user", "content": "What is 2 + 2?"}]
    whole = client.chat.completions.create(messages=parts, **_greedy())
    assert whole.choices[0].message.content == client.chat.completions.create(messages=plain, **_greedy()) \
        .choices[0].message.content  # the parts are the same text as the string
    stream = client.chat.completions.create(messages=parts, stream=True, stream_options={"include_usage": True},
                                            **_greedy())
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) > 1
    assert "".join(deltas) == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12


def test_top5_logprobs(client):
    # completions key alternatives by their text, and byte-level pieces can decode alike: key them by id
    comp = client.completions.create(prompt=PROMPT, logprobs=5, **_greedy(return_tokens_as_token_ids=True))
    top = comp.choices[0].logprobs.top_logprobs
    assert len(top) == 12 and all(len(pos) == 5 for pos in top)
    chat = client.chat.completions.create(messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=5,
                                          **_greedy())
    content = chat.choices[0].logprobs.content
    assert len(content) == 12 and all(len(t.top_logprobs) == 5 for t in content)
    # greedy: every sampled token is the most likely one
    assert all(t.logprob == pytest.approx(max(a.logprob for a in t.top_logprobs), abs=1e-5) for t in content)


def test_echo_scores_the_prompt_like_the_learner(client, tiny_model):
    """Prompt log-likelihood through `echo` equals the learner's logprobs of the same tokens (fp32, both)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polya.rl.grpo import token_logprobs

    resp = client.completions.create(model="tiny", prompt=PROMPT, echo=True, logprobs=1, max_tokens=0,
                                     extra_body={"return_tokens_as_token_ids": True})
    lp = resp.choices[0].logprobs
    assert resp.choices[0].text == PROMPT  # echoed, nothing generated
    ids = [int(t.removeprefix("token_id:")) for t in lp.tokens]
    assert ids == AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) > 3

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    with torch.no_grad():
        x = torch.tensor([ids])
        learner = token_logprobs(model(x).logits[:, :-1].float(), x[:, 1:])[0].tolist()
    assert lp.token_logprobs[1:] == pytest.approx(learner, abs=1e-3)
    # top_logprobs hold the scored token (and the argmax where it differs) at every scored position
    assert all(str(tok) in top for tok, top in zip(lp.tokens[1:], lp.top_logprobs[1:]))


def test_parameters_the_server_does_not_implement_are_400s_naming_them(client):
    from openai import BadRequestError

    r = httpx.post(f"{URL}/completions", json={"prompt": "x", "max_tokens": 2, "frobnicate": 1})
    assert r.status_code == 400 and r.json()["error"]["param"] == "frobnicate" and "frobnicate" in r.text
    r = httpx.post(f"{URL}/chat/completions", json={"messages": [{"role": "user", "content": "x"}],
                                                     "return_token_offsets": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "return_token_offsets"
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        with pytest.raises(BadRequestError, match="seed"):  # vLLM's CPU sampler cannot take one (it kills the engine)
            client.completions.create(model="tiny", prompt="x", max_tokens=2, seed=3)
    with pytest.raises(BadRequestError, match="logprobs"):  # beyond the engine's max_logprobs (20)
        client.completions.create(model="tiny", prompt="x", max_tokens=2, logprobs=50)
    with pytest.raises(BadRequestError, match="exceeds this endpoint's limit of 128"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                       max_completion_tokens=500)
    ok = httpx.post(f"{URL}/completions", json={"prompt": "x", "max_tokens": 2, "seed": None, "user": "me"})
    assert ok.status_code == 200  # null means not sent; `user` is metadata


def test_polyas_remote_engine_gets_token_ids_and_drops_what_the_server_refuses(client):
    """`engines/remote.py` (evaluation against any OpenAI endpoint) asks for token ids with vLLM's extension and
    gets them from this endpoint; on CPU the endpoint refuses a per-request seed, which the engine then stops
    sending (its greedy answer is the server's own)."""
    import asyncio

    from vllm.platforms import current_platform

    from polya.engines.base import EngineConfig, Sampling
    from polya.engines.remote import OpenAIEngine

    engine = OpenAIEngine(EngineConfig(model=URL, kind="openai", served_name="tiny"))
    out = asyncio.run(engine.generate([PROMPT], Sampling(temperature=0.0, max_tokens=6, n=1, seed=3)))
    want = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=6, temperature=0.0,
                                     extra_body={"return_token_ids": True}).choices[0]
    assert out[0][0].text == want.text and out[0][0].token_ids == want.model_extra["token_ids"]
    assert len(out[0][0].token_ids) > 0
    assert engine.refused == ({"seed"} if current_platform.is_cpu() else set())


def test_http_and_handle_share_the_engine_and_its_weights(client, rollout, tiny_model):
    """The OpenAI endpoint answers from the same AsyncLLM the RL handle drives, weight reloads included."""
    import safetensors.torch
    import torch
    from transformers import AutoModelForCausalLM

    greedy = {"temperature": 0.0, "max_tokens": 8, "n": 1, "seed": None, "logprobs": True, "top_p": 1.0, "stop": [],
              "ignore_eos": True}

    def both():
        by_handle = rollout.generate.remote([PROMPT], greedy).result()[0][0]["token_ids"]
        by_http = client.completions.create(prompt=PROMPT, **{**_greedy(return_token_ids=True), "max_tokens": 8})
        return by_handle, by_http.choices[0].model_extra["token_ids"]

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    original = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(5)
    moved = {k: (v + torch.randn(v.shape, generator=g) * 0.5).contiguous() for k, v in original.items()}
    before_handle, before_http = both()
    assert before_handle == before_http
    try:
        rollout.update_weights.remote(safetensors.torch.save(moved)).result()
        after_handle, after_http = both()
        assert after_handle == after_http != before_http
    finally:
        rollout.update_weights.remote(safetensors.torch.save(original)).result()
    assert both()[1] == before_http


@pytest.fixture(scope="module")
def fallback(ray_session, tiny_model):
    """The same app on the transformers engine (where vLLM does not import), beside the vLLM one."""
    from ray import serve

    from polya.engines.base import EngineConfig
    from polya.serve.launch import start_rollout

    cfg = EngineConfig(model=str(tiny_model), kind="transformers", dtype="float32", max_model_len=512,
                       served_name="tiny")
    start_rollout(cfg, http_port=PORT, max_tokens_limit=128, name=APP + "-hf", route_prefix=HF_PREFIX)
    yield f"http://127.0.0.1:{PORT}{HF_PREFIX}/v1"
    serve.delete(APP + "-hf")


def test_fallback_answers_what_it_can_and_400s_the_rest(fallback):
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=fallback, api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == ["tiny"]
    chat = client.chat.completions.create(model="tiny", max_tokens=4,
                                          messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens <= 4
    comp = client.completions.create(model="tiny", prompt="2 + 2 =", max_tokens=4, logprobs=0,
                                     extra_body={"return_token_ids": True})
    assert len(comp.choices[0].logprobs.token_logprobs) == len(comp.choices[0].model_extra["token_ids"]) > 0
    refused = [("stream", {"stream": True}), ("echo", {"echo": True, "logprobs": 0}), ("logprobs", {"logprobs": 5}),
               ("stop", {"stop": ["\n"]}), ("suffix", {"suffix": "x"})]
    for param, extra in refused:
        r = httpx.post(f"{fallback}/completions", json={"prompt": "x", "max_tokens": 2, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (param, r.text)
    with pytest.raises(BadRequestError, match="stream"):
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], stream=True)
    with pytest.raises(BadRequestError, match="exceeds this endpoint's limit of 128"):
        client.completions.create(model="tiny", prompt="x", max_tokens=1000)
    with pytest.raises(BadRequestError, match="context length"):
        client.completions.create(model="tiny", prompt="7 " * 600, max_tokens=100)
