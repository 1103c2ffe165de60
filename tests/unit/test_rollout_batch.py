"""Rollouts as learner tensors: layout, and logprobs equal to each sequence computed alone, unpadded."""
from __future__ import annotations

import pytest
import torch

from polya.rl.rollout_batch import pack, response_logprobs

SEQS = [
    {"prompt_ids": [5, 6, 7], "ids": [8, 9], "adv": 1.0},
    {"prompt_ids": [10], "ids": [11, 12, 13], "adv": -0.5},
    {"prompt_ids": [14, 15], "ids": [], "adv": 0.0},  # an empty response (stopped at once)
]


def test_prompts_left_padded_responses_right_padded():
    b = pack(SEQS, pad_id=0)
    assert b.ids.tolist() == [[5, 6, 7, 8, 9, 0], [0, 0, 10, 11, 12, 13], [0, 14, 15, 0, 0, 0]]
    assert b.attention.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0]]
    assert b.positions.tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3], [0, 0, 1, 1, 1, 1]]
    assert b.mask.tolist() == [[1, 1, 0], [1, 1, 1], [0, 0, 0]] and b.response_width == 3
    assert b.advantages.tolist() == [1.0, -0.5, 0.0]
    with pytest.raises(ValueError, match="no sequences"):
        pack([], 0)


def test_logprobs_match_each_sequence_alone(tiny_model):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    b = pack(SEQS, pad_id=0)
    with torch.no_grad():
        logp, ent = response_logprobs(model, b, want_entropy=True)
        assert logp.shape == ent.shape == (3, 3)
        for i, s in enumerate(SEQS):
            full = torch.tensor([s["prompt_ids"] + s["ids"]])
            alone = torch.log_softmax(model(input_ids=full).logits[0, :-1].float(), -1)
            want = alone[len(s["prompt_ids"]) - 1 :].gather(-1, full[0, len(s["prompt_ids"]) :, None])[:, 0]
            got = logp[i, : len(s["ids"])]
            assert torch.allclose(got, want, atol=1e-5), (i, got, want)
        assert (ent[b.mask.bool()] > 0).all()
