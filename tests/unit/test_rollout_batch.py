"""Rollouts as learner tensors: layout, logprobs equal to each sequence computed alone, unpadded, and the
shared-prompt path (distinct prompts run once, their cache gathered per sequence) equal to the full one in
logprobs and in gradients."""
from __future__ import annotations

import pytest
import torch

from polya.rl.grpo import logprobs_and_entropy
from polya.rl.rollout_batch import pack, response_logits, response_logprobs

SEQS = [
    {"prompt_ids": [5, 6, 7], "ids": [8, 9], "adv": 1.0},
    {"prompt_ids": [10], "ids": [11, 12, 13], "adv": -0.5},
    {"prompt_ids": [14, 15], "ids": [], "adv": 0.0},  # an empty response (stopped at once)
]


def test_prompts_left_padded_responses_right_padded():
    b = pack(SEQS, pad_id=0)
    assert not b.shares_prompts and b.owner.tolist() == [0, 1, 2]
    assert b.ids.tolist() == [[5, 6, 7, 8, 9, 0], [0, 0, 10, 11, 12, 13], [0, 14, 15, 0, 0, 0]]
    assert b.attention.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert b.positions.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3], [0, 0, 1, 1, 1, 1]]
    assert b.mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]] and b.response_width == 3
    assert b.advantages.tolist() == [1.0, -0.5, 0.0]
    with pytest.raises(ValueError, match="no sequences"):
        pack([], 0)


def _padded(model, batch):
    """(logprobs, entropy) from the padded layouts (`response_logits`: shared-prompt or full), whatever
    `response_logprobs` would dispatch to (it takes the packed path where that does less work)."""
    return logprobs_and_entropy(response_logits(model, batch), batch.response_ids, 1.0)


@pytest.mark.parametrize("layout", ["dispatched", "padded"])
def test_logprobs_match_each_sequence_alone(tiny_model, layout):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    b = pack(SEQS, pad_id=0)
    with torch.no_grad():
        logp, ent = response_logprobs(model, b, want_entropy=True) if layout == "dispatched" else _padded(model, b)
        assert logp.shape == ent.shape == (3, 3)
        for i, s in enumerate(SEQS):
            full = torch.tensor([s["prompt_ids"] + s["ids"]])
            alone = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
            want = alone[len(s["prompt_ids"]) - 1 :].gather(-1, full[0, len(s["prompt_ids"]) :, None])[:, 0]
            got = logp[i, : len(s["ids"])]
            assert torch.allclose(got, want, atol=1e-5), (i, got, want)
        assert (ent[b.mask.bool()] > 0).all()


# two GRPO groups of 3 completions, interleaved as a rank's shard can be, plus a lone prompt
GROUPS = [
    {"prompt_ids": [5, 6, 7, 8], "ids": [9, 10, 11], "adv": 1.0},
    {"prompt_ids": [20, 21], "ids": [22], "adv": 0.5},
    {"prompt_ids": [5, 6, 7, 8], "ids": [12], "adv": -1.0},
    {"prompt_ids": [20, 21], "ids": [23, 24, 25, 26], "adv": -0.5},
    {"prompt_ids": [5, 6, 7, 8], "ids": [], "adv": 0.0},
    {"prompt_ids": [20, 21], "ids": [27, 28], "adv": 0.0},
    {"prompt_ids": [30], "ids": [31, 32], "adv": 2.0},
]


def test_shared_prompts_are_stored_once():
    b = pack(GROUPS, pad_id=0)
    assert b.shares_prompts and b.owner.tolist() == [0, 1, 0, 1, 0, 1, 2]
    assert b.prompt_ids.tolist() == [[5, 6, 7, 8], [0, 0, 20, 21], [0, 0, 0, 30]]
    assert b.prompt_attention.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]
    assert b.response_ids.tolist()[3] == [23, 24, 25, 26] and b.mask.tolist()[4] == [0, 0, 0, 0]
    # the full view is what the unshared layout was
    assert b.ids.tolist()[1] == [0, 0, 20, 21, 22, 0, 0, 0]
    assert b.positions.tolist()[1] == [0, 0, 0, 1, 2, 2, 2, 2]
    full = b.unshared()
    assert not full.shares_prompts and full.owner.tolist() == list(range(7))
    assert torch.equal(full.ids, b.ids) and torch.equal(full.attention, b.attention)


def test_shared_prompt_path_equals_full_sequences_in_values_and_gradients(tiny_model):
    from transformers import AutoModelForCausalLM

    from polya.rl.grpo import grpo_loss

    shared = pack(GROUPS, pad_id=0)
    full = shared.unshared()
    assert shared.shares_prompts and not full.shares_prompts
    grads, values = [], []
    for batch in (shared, full):
        model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        model.train()
        logp, ent = _padded(model, batch)  # the two padded layouts (the packed one has its own test)
        loss, _ = grpo_loss(logp, logp.detach(), batch.advantages, batch.mask)
        loss.backward()
        values.append((logp.detach(), ent.detach()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    m = shared.mask.bool()
    assert torch.allclose(values[0][0][m], values[1][0][m], atol=1e-5)
    assert torch.allclose(values[0][1][m], values[1][1][m], atol=1e-4)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 5
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6, rtol=1e-4), name
    assert max(g.abs().max().item() for g in grads[0].values()) > 1e-4  # the loss did reach the weights


def test_one_token_responses_need_only_the_prompt_pass(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    seqs = [{"prompt_ids": [5, 6], "ids": [t], "adv": 0.0} for t in (7, 8, 9)]
    b = pack(seqs, pad_id=0)
    with torch.no_grad():
        got = _padded(model, b)[0]
        want = _padded(model, b.unshared())[0]
    assert got.shape == (3, 1) and torch.allclose(got, want, atol=1e-5)
