"""The packed (padding-free) learner pass: its index plan, equality with the padded layout in logprobs,
entropy and gradients, and the cost comparison that picks it."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from polya.rl import packed
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

    batch = pack(SEQS, pad_id=0)
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
    assert (lp_a[~m] == 0).all()  # past a response's end: nothing computed
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


def test_dispatch_takes_the_padded_path_under_gradient_checkpointing(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    batch = pack(SEQS, pad_id=0)
    assert _packs(model, batch)
    model.gradient_checkpointing_enable()
    assert not _packs(model, batch)  # no cache to put the responses on
    assert not _packs(model, pack([{"prompt_ids": [5], "ids": [], "adv": 0.0}], pad_id=0))  # nothing to score
    with torch.no_grad():
        lp, _ = response_logprobs(model.eval(), batch)
    assert torch.allclose(lp[batch.mask.bool()], _padded(model, batch, 1.0)[0][batch.mask.bool()], atol=1e-5)
