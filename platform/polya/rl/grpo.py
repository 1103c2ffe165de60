"""GRPO math, free of I/O: group-relative advantages, the clipped surrogate with separate low/high clip,
the k3 KL estimator to a frozen reference, and token- or sequence-level loss aggregation.

Conventions (as in TRL's GRPOTrainer and the DAPO / Dr. GRPO papers):
* rewards come as (prompts, group) and advantages are broadcast over a completion's tokens;
* ``scale=True`` divides by the group's standard deviation (unbiased, like ``torch.std``) plus ``eps``;
  ``scale=False`` is Dr. GRPO (mean-centred only);
* ``token`` aggregation averages over every completion token of the batch (long answers weigh more);
  ``sequence`` averages per completion first, then over completions (the original GRPO);
* the KL term is k3: ``exp(ref - logp) - (ref - logp) - 1`` (non-negative, unbiased in expectation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """rewards: (P, G) -> advantages (P, G)."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group>=2), got {tuple(rewards.shape)}")
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if not scale:
        return centred
    return centred / (rewards.std(dim=1, keepdim=True) + eps)


def zero_signal_groups(rewards: torch.Tensor) -> torch.Tensor:
    """Boolean (P,): groups whose rewards are all equal (their advantages are all zero: no signal)."""
    return (rewards.max(dim=1).values - rewards.min(dim=1).values).abs() < 1e-12


def _log_softmax(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _gather(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label_t) for every position: logits (B, T, V), labels (B, T) -> (B, T)."""
    return _gather(_log_softmax(logits, temperature), labels)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of the softmax, (B, T, V) -> (B, T)."""
    return _entropy(_log_softmax(logits))


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and `entropy` from one log-softmax over the vocabulary; the entropy is a statistic,
    computed outside the autograd graph (no (B, T, V) intermediates kept for a backward that never comes)."""
    logp = _log_softmax(logits)
    with torch.no_grad():
        ent = _entropy(logp)
    return _gather(logp, labels), ent


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token") -> torch.Tensor:
    mask = mask.to(per_token.dtype)
    if mode == "token":
        return (per_token * mask).sum() / mask.sum().clamp(min=1)
    if mode == "sequence":
        per_seq = (per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        return per_seq.mean()
    raise ValueError(f"aggregation must be 'token' or 'sequence', got {mode!r}")


@dataclass
class LossStats:
    loss: float
    policy_loss: float
    kl: float
    clip_fraction: float
    ratio_mean: float


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float | None = None,
    ref_logp: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    aggregation: str = "token",
) -> tuple[torch.Tensor, LossStats]:
    """The GRPO objective to minimise. logp/old_logp/ref_logp/mask: (B, T); advantages: (B,)."""
    clip_high = clip_low if clip_high is None else clip_high
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    policy = aggregate(per_token, mask, aggregation)
    kl_mean = torch.zeros((), dtype=logp.dtype)
    loss = policy
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference logprobs")
        kl = k3_kl(logp, ref_logp)
        kl_mean = aggregate(kl, mask, aggregation)
        loss = policy + kl_coef * kl_mean
    with torch.no_grad():
        m = mask.bool()
        is_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        clip_frac = is_clipped[m].float().mean().item() if m.any() else 0.0
        ratio_mean = ratio[m].mean().item() if m.any() else 1.0
    return loss, LossStats(loss.detach().item(), policy.detach().item(), float(kl_mean.detach()), clip_frac, ratio_mean)
