"""The packed (padding-free) learner pass: its index plan, equality with the padded layout in logprobs,
entropy and gradients, and the cost comparison that picks it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from polya.rl import packed, rollout_batch
from polya.rl.grpo import grpo_loss, logprobs_and_entropy
from polya.rl.rollout_batch import _packs, pack, response_logits, response_logprobs

# two groups interleaved, an empty response, a one-token response, and a lone prompt
SEQS = [
    {"prompt_ids": [5, 6, 7, 8], "ids": [9, 10, 11], "adv": 1.0},
    {"prompt_ids": [20, 21], "ids": [22], "adv": 0.5},
    {"prompt_ids": [5, 6, 7, 8], "ids": [12, 13], "adv": -1.0},
    {"prompt_ids": [20, 21], "ids": [23, 24, 25, 26], "adv": -0.5},
    {"prompt_ids": [5, 6, 7, 8], "ids": [], "adv": 0.0},
    {"prompt_ids": [30], "ids": [31, 32], "adv": 2.0},
]
# plus a rank's filler copy (`polya.stages.grpo.shard`): computed like any sequence, masked out of the loss
WITH_FILLER = SEQS + [{"prompt_ids": [20, 21], "ids": [22, 27], "adv": 0.5, "filler": True}]


def test_plan_lays_out_real_tokens_only():
    pk = packed.plan(pack(SEQS, pad_id=0))
    assert pk.prompt_ids.tolist() == [5, 6, 7, 8, 20, 21, 30]  # no left padding
    assert pk.prompt_seg.tolist() == [0, 0, 0, 0, 1, 1, 2] and pk.prompt_pos.tolist() == [0, 1, 2, 3, 0, 1, 0]
    assert pk.prompt_last.tolist() == [3, 5, 6]
    # every response but its last token: seq 0 [9, 10], seq 2 [12], seq 3 [23, 24, 25], seq 5 [31]
    assert pk.tail_ids.tolist() == [9, 10, 12, 23, 24, 25, 31]
    assert pk.tail_seg.tolist() == [0, 0, 2, 3, 3, 3, 5] and pk.tail_owner.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert pk.tail_pos.tolist() == [4, 5, 4, 2, 3, 4, 1]  # prompt length + index: where the engine had them
    assert pk.first_rows.tolist() == [0, 1, 2, 3, 5] and pk.first_owner.tolist() == [0, 1, 0, 1, 2]
    # 12 scored tokens = the responses' 12 tokens; each label is the token at its (row, col)
    assert len(pk.labels) == sum(len(s["ids"]) for s in SEQS) == 12
    for r, c, y in zip(pk.out_row.tolist(), pk.out_col.tolist(), pk.labels.tolist()):
        assert SEQS[r]["ids"][c] == y


def _padded(model, batch, temperature):
    logits = response_logits(model, batch)
    return logprobs_and_entropy(logits, batch.response_ids, temperature)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_packed_equals_padded_in_values_and_gradients(tiny_model, temperature):
    from transformers import AutoModelForCausalLM

    batch = pack(WITH_FILLER, pad_id=0)
    results = []
    for run in (packed.response_logprobs, lambda m, b, e, t: _padded(m, b, t)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).train()
        logp, ent = run(model, batch, True, temperature)
        loss, _ = grpo_loss(logp, logp.detach(), batch.advantages, batch.mask)
        loss.backward()
        results.append((logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()
                                             if p.grad is not None}))
    (lp_a, ent_a, g_a), (lp_b, ent_b, g_b) = results
    m = batch.mask.bool()
    assert int(m.sum()) == 12
    assert torch.allclose(lp_a[m], lp_b[m], atol=1e-5) and torch.allclose(ent_a[m], ent_b[m], atol=1e-4)
    past_end = torch.arange(batch.response_ids.shape[1]) >= batch.lengths[:, None]
    assert (lp_a[past_end] == 0).all() and (ent_a[past_end] == 0).all()  # past a response's end: nothing computed
    filler = ~m & ~past_end
    assert int(filler.sum()) == 2 and torch.allclose(lp_a[filler], lp_b[filler], atol=1e-5)
    assert g_a.keys() == g_b.keys() and len(g_a) > 5
    for name in g_a:
        assert torch.allclose(g_a[name], g_b[name], atol=1e-6, rtol=1e-4), name
    assert max(g.abs().max().item() for g in g_a.values()) > 1e-4


SMOLLM2 = SimpleNamespace(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, vocab_size=49152)


def _group(prompt_len: int, lengths: list[int]) -> list[dict]:
    return [{"prompt_ids": list(range(1, prompt_len + 1)), "ids": [7] * n, "adv": 1.0} for n in lengths]


def test_packed_is_chosen_where_it_does_less_work():
    # the GRPO benchmark's shape: a 182-token prompt, 4 answers of which one ran to maxTokens (128)
    ragged = pack(_group(182, [50, 128, 64, 70]), pad_id=0)
    assert packed.cheaper(SMOLLM2, ragged)
    # 64 equal 1024-token answers to one prompt: no padding to save, and a 65k-token dense mask to pay
    long_even = pack(_group(256, [1024] * 64), pad_id=0)
    assert not packed.cheaper(SMOLLM2, long_even)


def test_dispatch_decisions(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = pack(WITH_FILLER, pad_id=0)
    assert _packs(model, batch)
    assert not _packs(model, pack([{"prompt_ids": [5], "ids": [], "adv": 0.0}], pad_id=0))  # nothing to score
    model.gradient_checkpointing_enable()
    assert not _packs(model, batch)  # no cache to put the responses on


def test_sliding_window_models_take_the_padded_path():
    from transformers import Gemma2Config, LlamaConfig, MistralConfig, Qwen2Config

    assert packed.full_attention_only(LlamaConfig())
    assert packed.full_attention_only(Qwen2Config(use_sliding_window=False))
    assert packed.full_attention_only(MistralConfig(sliding_window=None))
    assert not packed.full_attention_only(MistralConfig(sliding_window=4096))
    assert not packed.full_attention_only(Qwen2Config(use_sliding_window=True, sliding_window=4096, max_window_layers=0))
    assert not packed.full_attention_only(Gemma2Config())
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, vocab_size=64)
    for cfg, packs in ((LlamaConfig(**small), True), (MistralConfig(sliding_window=4, **small), False)):
        model = SimpleNamespace(config=cfg, is_gradient_checkpointing=False)
        assert _packs(model, pack(WITH_FILLER, pad_id=0)) is packs


def test_the_memory_cap_keeps_huge_micro_batches_padded(monkeypatch):
    # 63 ten-token answers and one of 8192: packed is far less work (the padded layout runs 64 x 8192
    # positions), but its response mask would hold 8758 x 8774 elements (147 MB in bf16) > 2^26
    lopsided = pack(_group(16, [10] * 63 + [8192]), pad_id=0)
    assert not packed.cheaper(SMOLLM2, lopsided)
    monkeypatch.setattr(packed, "MAX_MASK_ELEMENTS", 1 << 40)
    assert packed.cheaper(SMOLLM2, lopsided)


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_dispatched_logprobs_match_each_sequence_alone(tiny_model, monkeypatch, layout):
    """`response_logprobs` on either path (forced; a spy proves which ran) equals each sequence run alone,
    and is 0 past each response's end on both (a policy and a reference pass may take different paths)."""
    from transformers import AutoModelForCausalLM

    ran = []
    monkeypatch.setattr(rollout_batch, "_packs", lambda model, batch: layout == "packed")
    real_packed, real_padded = packed.response_logprobs, rollout_batch.response_logits
    monkeypatch.setattr(packed, "response_logprobs", lambda *a: ran.append("packed") or real_packed(*a))
    monkeypatch.setattr(rollout_batch, "response_logits", lambda *a: ran.append("padded") or real_padded(*a))
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    batch = pack(WITH_FILLER, pad_id=0)
    with torch.no_grad():
        lp, ent = response_logprobs(model, batch, want_entropy=True, temperature=0.7)
        assert ran == [layout]
        for i, s in enumerate(WITH_FILLER):
            full = torch.tensor([s["prompt_ids"] + s["ids"]])
            alone = torch.log_softmax(model(input_ids=full).logits[0, :-1].float() / 0.7, -1)
            want = alone[len(s["prompt_ids"]) - 1 :].gather(-1, full[0, len(s["prompt_ids"]) :, None])[:, 0]
            assert torch.allclose(lp[i, : len(s["ids"])], want, atol=1e-5), (layout, i)
            assert (lp[i, len(s["ids"]) :] == 0).all() and (ent[i, len(s["ids"]) :] == 0).all()
