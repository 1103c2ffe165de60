"""Rollouts as learner tensors, and the policy's logprobs of their response tokens.

Layout (as TRL's GRPOTrainer): prompts left-padded to a common length P, responses right-padded to a
common length C, so every response starts at column P. Then the model's vocabulary head only runs on
the last C + 1 positions (``logits_to_keep``): on the demo's few-shot prompts about two thirds of every
sequence is prompt, and the head plus its log-softmax over SmolLM2's 49,152 tokens was computed there
for nothing. Position ids count real tokens only, so a left-padded row sees the positions it had in the
rollout engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    ids: torch.Tensor  # (B, P + C) token ids
    attention: torch.Tensor  # (B, P + C) 1 on real tokens
    positions: torch.Tensor  # (B, P + C) position of each token within its own sequence
    mask: torch.Tensor  # (B, C) 1 on response tokens
    advantages: torch.Tensor  # (B,)

    @property
    def response_width(self) -> int:
        return self.mask.shape[1]


def pack(seqs: list[dict], pad_id: int) -> RolloutBatch:
    """``seqs``: dicts with ``prompt_ids``, ``ids`` (the response) and ``adv``."""
    if not seqs:
        raise ValueError("no sequences to pack")
    p_width = max(len(s["prompt_ids"]) for s in seqs)
    c_width = max(max(len(s["ids"]) for s in seqs), 1)
    ids = torch.full((len(seqs), p_width + c_width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(seqs), c_width), dtype=torch.long)
    for i, s in enumerate(seqs):
        prompt, response = s["prompt_ids"], s["ids"]
        ids[i, p_width - len(prompt) : p_width] = torch.tensor(prompt, dtype=torch.long)
        ids[i, p_width : p_width + len(response)] = torch.tensor(response, dtype=torch.long)
        attention[i, p_width - len(prompt) : p_width + len(response)] = 1
        mask[i, : len(response)] = 1
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    advantages = torch.tensor([float(s["adv"]) for s in seqs], dtype=torch.float)
    return RolloutBatch(ids, attention, positions, mask, advantages)


def response_logprobs(model, batch: RolloutBatch, want_entropy: bool = False):
    """(logprobs (B, C), entropy (B, C) or None) of the response tokens under ``model``."""
    from polya.rl.grpo import entropy, token_logprobs

    width = batch.response_width
    logits = model(input_ids=batch.ids, attention_mask=batch.attention, position_ids=batch.positions,
                   logits_to_keep=width + 1).logits[:, :-1]  # position t predicts token t + 1
    logp = token_logprobs(logits, batch.ids[:, -width:])
    return logp, (entropy(logits) if want_entropy else None)
