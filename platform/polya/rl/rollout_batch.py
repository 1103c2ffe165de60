"""Rollouts as learner tensors, and the policy's logprobs of their response tokens.

Layout (as TRL's GRPOTrainer): prompts left-padded to a common length P, responses right-padded to a
common length C, so every response starts at column P. The vocabulary head only runs on response
positions (``logits_to_keep``): on the demo's few-shot prompts about two thirds of every sequence is
prompt, and the head plus its log-softmax over SmolLM2's 49,152 tokens was computed there for nothing.
Position ids count real tokens only, so a left-padded row sees the positions it had in the rollout engine.

**Shared prompts.** A GRPO group is ``groupSize`` completions of one prompt, so a micro-batch holds the
same prompt several times. `pack` keeps each distinct prompt once (``prompt_ids``, with ``owner`` mapping
every sequence to its prompt row), and `response_logprobs` runs the model over the distinct prompts
once, copies their key/value cache to the sequences that share them, and runs only the response tokens
on top: the same logits as the full sequences (gradients flow back through the shared cache), at
``U·P + B·C`` instead of ``B·(P + C)`` token positions — on the demo's 4-sample groups with ~185-token
prompts and ~85-token answers, half of them (fwd + bwd of 16 completions on SmolLM2 bf16, 2 CPU cores:
9.9 s instead of 14.0). Where no prompt repeats, or the model
recomputes activations (gradient checkpointing keeps no cache), the full sequences are run instead.

**No padding.** `response_logprobs` runs a batch packed (`polya.rl.packed`: prompts and responses at their
real lengths, a block-causal mask) wherever that does less work than this padded layout — on ragged answers,
which sampling makes the rule: 8.5–9.3 instead of 11.8 s per GRPO step of 16 SmolLM2 answers of 30–128
tokens on 2 CPU cores (bf16). `response_logits` is the padded layout, the reference the packed one is tested
against.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # (U, P) distinct prompts, left-padded
    prompt_attention: torch.Tensor  # (U, P) 1 on real prompt tokens
    owner: torch.Tensor  # (B,) the prompt row of every sequence
    response_ids: torch.Tensor  # (B, C) responses, right-padded
    mask: torch.Tensor  # (B, C) 1 on response tokens (0 on every token of a padding copy)
    advantages: torch.Tensor  # (B,)
    real: torch.Tensor  # (B,) 1 for a completion of the step, 0 for a copy that only fills a rank's share
    lengths: torch.Tensor  # (B,) response tokens of every sequence (a padding copy's too)

    @property
    def response_width(self) -> int:
        return self.mask.shape[1]

    @property
    def shares_prompts(self) -> bool:
        return self.prompt_ids.shape[0] < self.owner.shape[0]

    # the full-sequence view: every sequence with its own copy of its prompt
    @property
    def ids(self) -> torch.Tensor:  # (B, P + C)
        return torch.cat([self.prompt_ids[self.owner], self.response_ids], dim=1)

    @property
    def attention(self) -> torch.Tensor:  # (B, P + C): a padding copy attends to its tokens too (as packed)
        cols = torch.arange(self.response_width, device=self.lengths.device)
        present = (cols < self.lengths.unsqueeze(-1)).to(self.prompt_attention.dtype)
        return torch.cat([self.prompt_attention[self.owner], present], dim=1)

    @property
    def positions(self) -> torch.Tensor:  # (B, P + C)
        return _positions(self.attention)

    def unshared(self) -> "RolloutBatch":
        """The same batch with every sequence its own prompt row (`response_logits` then runs the full
        sequences): the reference the shared path is checked and timed against."""
        return dataclasses.replace(self, prompt_ids=self.prompt_ids[self.owner],
                                   prompt_attention=self.prompt_attention[self.owner],
                                   owner=torch.arange(self.owner.numel(), device=self.owner.device))

    def to(self, device: torch.device | str) -> "RolloutBatch":
        return RolloutBatch(**{f.name: getattr(self, f.name).to(device) for f in dataclasses.fields(self)})


def _positions(attention: torch.Tensor) -> torch.Tensor:
    return (attention.cumsum(-1) - 1).clamp(min=0)


def pack(seqs: list[dict], pad_id: int) -> RolloutBatch:
    """``seqs``: dicts with ``prompt_ids``, ``ids`` (the response) and ``adv``; ``filler: True`` marks a copy
    that only fills a rank's share (`polya.stages.grpo.shard`): it runs, masked out, and counts nowhere."""
    if not seqs:
        raise ValueError("no sequences to pack")
    rows: dict[tuple[int, ...], int] = {}
    owner = [rows.setdefault(tuple(s["prompt_ids"]), len(rows)) for s in seqs]
    prompts = list(rows)
    p_width = max(len(p) for p in prompts)
    c_width = max(max(len(s["ids"]) for s in seqs), 1)
    prompt_ids = torch.full((len(prompts), p_width), pad_id, dtype=torch.long)
    prompt_attention = torch.zeros_like(prompt_ids)
    for i, p in enumerate(prompts):
        if p:
            prompt_ids[i, p_width - len(p) :] = torch.tensor(p, dtype=torch.long)
            prompt_attention[i, p_width - len(p) :] = 1
    response_ids = torch.full((len(seqs), c_width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), c_width), dtype=torch.long)
    for i, s in enumerate(seqs):
        response_ids[i, : len(s["ids"])] = torch.tensor(s["ids"], dtype=torch.long)
        mask[i, : len(s["ids"])] = 0 if s.get("filler") else 1
    advantages = torch.tensor([float(s["adv"]) for s in seqs], dtype=torch.float)
    real = torch.tensor([0.0 if s.get("filler") else 1.0 for s in seqs])
    lengths = torch.tensor([len(s["ids"]) for s in seqs], dtype=torch.long)
    return RolloutBatch(prompt_ids, prompt_attention, torch.tensor(owner, dtype=torch.long), response_ids, mask,
                        advantages, real, lengths)


def _unwrap(model):
    return getattr(model, "module", model)  # a DeepSpeed engine wraps the Hugging Face model


def response_logits(model, batch: RolloutBatch) -> torch.Tensor:
    """(B, C, V): the logits that predict each response token (position t of a response predicts token t)."""
    width = batch.response_width
    if not batch.shares_prompts or getattr(_unwrap(model), "is_gradient_checkpointing", False):
        return model(input_ids=batch.ids, attention_mask=batch.attention, position_ids=batch.positions,
                     logits_to_keep=width + 1).logits[:, :-1]
    # the distinct prompts once; their last position predicts each response's first token
    head = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_attention,
                 position_ids=_positions(batch.prompt_attention), use_cache=True, logits_to_keep=1)
    first = head.logits[batch.owner]
    if width == 1:
        return first
    cache = head.past_key_values
    cache.batch_select_indices(batch.owner)  # every sequence gets its prompt's keys and values (a gather)
    attention = batch.attention
    positions = _positions(attention)[:, -width:]
    # the last response position predicts nothing: feed the first C - 1 response tokens
    tail = model(input_ids=batch.response_ids[:, :-1], attention_mask=attention[:, :-1],
                 position_ids=positions[:, :-1], past_key_values=cache, use_cache=False).logits
    return torch.cat([first, tail], dim=1)


def _packs(model, batch: RolloutBatch) -> bool:
    """Whether `polya.rl.packed` runs this batch: full attention in every layer (its block mask is passed
    as-is, so a sliding window would be lost), no gradient checkpointing (it keeps no cache), every prompt
    non-empty, some response token to score, and less work than the padded layout."""
    from polya.rl import packed

    net = _unwrap(model)
    if getattr(net, "is_gradient_checkpointing", False) or not packed.full_attention_only(net.config):
        return False
    if not bool((batch.prompt_attention.sum(-1) > 0).all()):
        return False
    return bool((batch.lengths > 0).any()) and packed.cheaper(net.config, batch)


def _past_end_zeroed(values: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
    """``values`` (B, C) with every position past a response's end set to 0, as the packed path leaves them
    (a policy pass and a reference pass may take different paths: a pad token's logprob in one and 0 in the
    other would put exp(±large) into the KL term, and inf x 0 = NaN)."""
    cols = torch.arange(values.shape[1], device=values.device)
    return values.masked_fill(cols >= batch.lengths.to(values.device).unsqueeze(-1), 0.0)


def response_logprobs(model, batch: RolloutBatch, want_entropy: bool = False, temperature: float = 1.0):
    """(logprobs (B, C), entropy (B, C) or None) of the response tokens under ``model`` sampled at
    ``temperature`` (the logits are divided by it, as the rollout engine did before sampling); 0 past each
    response's end, whichever layout ran."""
    from polya.rl import packed
    from polya.rl.grpo import logprobs_and_entropy, token_logprobs

    if _packs(model, batch):
        return packed.response_logprobs(model, batch, want_entropy, temperature)
    logits = response_logits(model, batch)
    if want_entropy:
        lp, ent = logprobs_and_entropy(logits, batch.response_ids, temperature)
        return _past_end_zeroed(lp, batch), _past_end_zeroed(ent, batch)
    return _past_end_zeroed(token_logprobs(logits, batch.response_ids, temperature), batch), None
