"""A rollout batch's response logprobs without padding: every prompt and every response in one row each.

The padded layout (`polya.rl.rollout_batch.response_logits`) runs every response to the micro-batch's longest
one. Sampled answers vary in length: on SmolLM2's arithmetic groups (4 completions, ``maxTokens: 128``)
one of the four usually runs to the limit while the mean is ~70 tokens, so ~40% of the learner's response
positions were padding, computed forwards and backwards for nothing (and the (B, C, V) fp32 log-softmax
over them too).

Here the micro-batch's distinct prompts run as one row (their real tokens only, one after another, each
attending causally to its own tokens) with a cache, and then every response's tokens as a second row on
top of that cache: a response token attends to its own prompt's block and to the tokens of its own
response before it (a block-causal 4D mask), at the positions it had in the rollout engine. The logits are
those of the padded layout, computed at real positions only: ``Σ prompt + Σ response`` tokens instead of
``U·P + B·C``. Gradients flow back through the prompts' cache, as in the padded shared-prompt path.

The mask is dense, so attention costs (row length)² where the padded path pays B·C²: `cheaper` compares the
two layouts' multiply-adds per micro-batch (linear layers, attention, the vocabulary head) and
`response_logprobs` takes the packed one only where it does less work — every small micro-batch; a large
GPU micro-batch of long answers keeps the padded path (there a variable-length attention kernel would be the
way, which a dense mask cannot express).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from polya.rl.rollout_batch import RolloutBatch


@dataclass
class Packed:
    """Index plan of one micro-batch in the packed layout (all 1-D, on the batch's device)."""

    prompt_ids: torch.Tensor  # (Lp,) the distinct prompts' real tokens, one after another
    prompt_seg: torch.Tensor  # (Lp,) which prompt each token belongs to
    prompt_pos: torch.Tensor  # (Lp,) position within its prompt
    prompt_last: torch.Tensor  # (U,) index of each prompt's last token (it predicts its responses' first token)
    tail_ids: torch.Tensor  # (Lt,) every response's tokens but its last, one response after another
    tail_seg: torch.Tensor  # (Lt,) which sequence each belongs to
    tail_owner: torch.Tensor  # (Lt,) its sequence's prompt
    tail_pos: torch.Tensor  # (Lt,) its position in the full sequence (prompt length + index in the response)
    first_rows: torch.Tensor  # (F,) the sequences with at least one response token
    first_owner: torch.Tensor  # (F,) their prompts
    # where each computed logprob lands in the (B, C) output, and the token it scores: first tokens, then tails
    out_row: torch.Tensor
    out_col: torch.Tensor
    labels: torch.Tensor


def plan(batch: "RolloutBatch") -> Packed:
    dev = batch.prompt_ids.device
    p_len = batch.prompt_attention.sum(-1)
    width = batch.prompt_ids.shape[1]
    keep = batch.prompt_attention.bool()  # left padding: the real tokens are each row's last p_len
    prompt_ids = batch.prompt_ids[keep]
    prompt_seg = torch.arange(len(p_len), device=dev).repeat_interleave(p_len)
    prompt_pos = (torch.arange(width, device=dev) - (width - p_len).unsqueeze(-1))[keep]
    prompt_last = p_len.cumsum(0) - 1
    n = batch.lengths
    tail_n = (n - 1).clamp(min=0)
    cols = torch.arange(batch.response_ids.shape[1], device=dev)
    tail_keep = cols.unsqueeze(0) < tail_n.unsqueeze(-1)  # (B, C): response tokens that predict a next one
    tail_ids = batch.response_ids[tail_keep]
    rows = torch.arange(len(n), device=dev).unsqueeze(-1).expand_as(tail_keep)
    tail_seg = rows[tail_keep]
    tail_col = cols.expand_as(tail_keep)[tail_keep]
    tail_owner = batch.owner[tail_seg]
    first_rows = torch.nonzero(n > 0).flatten()
    out_row = torch.cat([first_rows, tail_seg])
    out_col = torch.cat([torch.zeros_like(first_rows), tail_col + 1])
    return Packed(prompt_ids, prompt_seg, prompt_pos, prompt_last, tail_ids, tail_seg, tail_owner,
                  p_len[tail_owner] + tail_col, first_rows, batch.owner[first_rows], out_row, out_col, batch.response_ids[out_row, out_col])


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(q, k) booleans -> a (1, 1, q, k) additive mask in ``dtype`` (what eager and SDPA attention both take)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)[None, None]


def _model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def packed_logits(model, pk: Packed) -> torch.Tensor:
    """(F + Lt, V): the logits that score ``pk.labels`` (the first response tokens, then the tails)."""
    dtype = _model_dtype(model)
    lp = pk.prompt_ids.numel()
    idx = torch.arange(lp, device=pk.prompt_ids.device)
    causal = (pk.prompt_seg[:, None] == pk.prompt_seg[None]) & (idx[None] <= idx[:, None])
    head = model(input_ids=pk.prompt_ids[None], attention_mask=_additive(causal, dtype),
                 position_ids=pk.prompt_pos[None], use_cache=True, logits_to_keep=pk.prompt_last)
    first = head.logits[0][pk.first_owner]  # each prompt's last position predicts its responses' first token
    if pk.tail_ids.numel() == 0:
        return first
    lt = pk.tail_ids.numel()
    t_idx = torch.arange(lt, device=pk.tail_ids.device)
    sees_prompt = pk.tail_owner[:, None] == pk.prompt_seg[None]
    sees_tail = (pk.tail_seg[:, None] == pk.tail_seg[None]) & (t_idx[None] <= t_idx[:, None])
    tail = model(input_ids=pk.tail_ids[None], attention_mask=_additive(torch.cat([sees_prompt, sees_tail], 1), dtype),
                 position_ids=pk.tail_pos[None], past_key_values=head.past_key_values, use_cache=False).logits[0]
    return torch.cat([first, tail])


# the largest response-row mask (query x key elements) the packed path builds: 2^26 is 128 MB in bf16 (the
# padded path's masks and attention grow with B·C·(P + C) instead; past this, memory decides, not work)
MAX_MASK_ELEMENTS = 1 << 26


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def full_attention_only(config) -> bool:
    """Whether every layer attends to all earlier tokens: the packed path hands the model its own block mask,
    which a sliding-window layer (Mistral, Gemma 2/3, Qwen2 with ``use_sliding_window``) would not narrow."""
    cfg = _text_config(config)
    types = getattr(cfg, "layer_types", None)
    if types is not None and any(t != "full_attention" for t in types):
        return False
    return not getattr(cfg, "sliding_window", None) or getattr(cfg, "use_sliding_window", True) is False


def cheaper(config, batch: "RolloutBatch") -> bool:
    """Whether the packed layout does fewer multiply-adds than the padded shared-prompt one for this batch
    (per layer: linear maps ~ hidden·(4·hidden + 3·intermediate) per token, attention 2·hidden per
    query-key pair; the vocabulary head hidden·vocab per scored position), within `MAX_MASK_ELEMENTS`."""
    config = _text_config(config)
    h = config.hidden_size
    inter = getattr(config, "intermediate_size", 4 * h)
    layers = config.num_hidden_layers
    vocab = config.vocab_size
    linear = h * (4 * h + 3 * inter)
    u, p = batch.prompt_ids.shape
    b, c = batch.response_ids.shape
    lp = int(batch.prompt_attention.sum())
    lt = int((batch.lengths - 1).clamp(min=0).sum())
    if max(lp * lp, lt * (lp + lt)) > MAX_MASK_ELEMENTS:
        return False
    padded = layers * (linear * (u * p + b * c) + 2 * h * (u * p * p + b * c * (p + c))) + h * vocab * (u + b * c)
    packed = layers * (linear * (lp + lt) + 2 * h * (lp * lp + lt * (lp + lt))) + h * vocab * (u + lt)
    return packed < padded


def response_logprobs(model, batch: "RolloutBatch", want_entropy: bool, temperature: float):
    """(logprobs (B, C), entropy (B, C) or None) as `polya.rl.rollout_batch.response_logprobs`, computed packed;
    positions past a response's end are 0."""
    from polya.rl.grpo import logprobs_and_entropy, token_logprobs

    pk = plan(batch)
    logits = packed_logits(model, pk)[None]
    labels = pk.labels[None]
    if want_entropy:
        lp, ent = logprobs_and_entropy(logits, labels, temperature)
    else:
        lp, ent = token_logprobs(logits, labels, temperature), None
    shape = batch.response_ids.shape
    out = torch.zeros(shape, dtype=lp.dtype, device=lp.device).index_put((pk.out_row, pk.out_col), lp[0])
    if ent is None:
        return out, None
    return out, torch.zeros(shape, dtype=ent.dtype, device=ent.device).index_put((pk.out_row, pk.out_col), ent[0])
