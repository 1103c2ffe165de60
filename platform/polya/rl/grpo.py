"""GRPO math, free of I/O: group-relative advantages, the clipped surrogate with separate low/high clip,
the k3 KL estimator to a frozen reference, and the loss's normalisation over a whole step.

Conventions (as in TRL's GRPOTrainer and the DAPO / Dr. GRPO papers):
* rewards come as (prompts, group) and advantages are broadcast over a completion's tokens;
* ``scale=True`` divides by the group's standard deviation (unbiased, like ``torch.std``) plus ``eps``;
  ``scale=False`` is Dr. GRPO's advantage (mean-centred only);
* logprobs are taken at the rollout's sampling temperature (logits / T), the distribution the completions
  were drawn from: the ratio, the KL and the gradient are otherwise those of another policy;
* aggregation is over the **whole step** (every completion of every micro-batch on every rank), whatever
  the micro-batch size: a step's loss is ``sum(contributions) / normaliser`` with
  ``token``    contribution = Σ per-token terms,               normaliser = completion tokens in the step (DAPO);
  ``sequence`` contribution = Σ per-completion mean of terms,  normaliser = completions in the step (GRPO);
  ``constant`` contribution = Σ per-token terms,               normaliser = completions × max_tokens (Dr. GRPO);
  `step_normaliser` gives the normaliser from counts, `grpo_loss(..., normaliser=)` a micro-batch's share
  (without one, a batch is normalised on its own: the single-batch case);
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
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _gather(logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def _entropy(logp: torch.Tensor) -> torch.Tensor:
    return -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(label_t) for every position under softmax(logits / temperature): (B, T, V), (B, T) -> (B, T)."""
    return _gather(_log_softmax(logits, temperature), labels)


def entropy(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-position entropy of softmax(logits / temperature), (B, T, V) -> (B, T)."""
    return _entropy(_log_softmax(logits, temperature))


def logprobs_and_entropy(logits: torch.Tensor, labels: torch.Tensor,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_logprobs` and `entropy` from one log-softmax over the vocabulary; the entropy is a statistic,
    computed outside the autograd graph (no (B, T, V) intermediates kept for a backward that never comes)."""
    logp = _log_softmax(logits, temperature)
    with torch.no_grad():
        ent = _entropy(logp)
    return _gather(logp, labels), ent


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    d = ref_logp - logp
    return torch.exp(d) - d - 1


AGGREGATIONS = ("token", "sequence", "constant")


def _check_mode(mode: str) -> None:
    if mode not in AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def contribution(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token") -> torch.Tensor:
    """A batch's un-normalised share of the step's loss (see the module docstring)."""
    _check_mode(mode)
    mask = mask.to(per_token.dtype)
    if mode == "sequence":
        return ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
    return (per_token * mask).sum()


def step_normaliser(tokens: float, completions: float, mode: str = "token", max_tokens: int | None = None) -> float:
    """The step's normaliser from its completion-token and completion counts (summed over micro-batches
    and ranks); ``constant`` needs the rollout's ``max_tokens``."""
    _check_mode(mode)
    if mode == "token":
        return max(float(tokens), 1.0)
    if mode == "sequence":
        return max(float(completions), 1.0)
    if not max_tokens:
        raise ValueError("constant aggregation (Dr. GRPO) needs max_tokens")
    return max(float(completions), 1.0) * max_tokens


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token", normaliser: float | None = None,
              max_tokens: int | None = None) -> torch.Tensor:
    """``contribution / normaliser``; without a normaliser, this batch's own (the batch is the whole step)."""
    if normaliser is None:
        normaliser = step_normaliser(float(mask.sum()), float(mask.shape[0]), mode, max_tokens)
    return contribution(per_token, mask, mode) / normaliser


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
    normaliser: float | None = None,
    max_tokens: int | None = None,
) -> tuple[torch.Tensor, LossStats]:
    """The GRPO objective to minimise, or this batch's share of a step's (``normaliser`` from
    `step_normaliser` over the whole step). logp/old_logp/ref_logp/mask: (B, T); advantages: (B,)."""
    clip_high = clip_low if clip_high is None else clip_high
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    policy = aggregate(per_token, mask, aggregation, normaliser, max_tokens)
    kl_mean = torch.zeros((), dtype=logp.dtype)
    loss = policy
    if kl_coef > 0:
        if ref_logp is None:
            raise ValueError("kl_coef > 0 needs reference logprobs")
        kl = k3_kl(logp, ref_logp)
        kl_mean = aggregate(kl, mask, aggregation, normaliser, max_tokens)
        loss = policy + kl_coef * kl_mean
    with torch.no_grad():
        m = mask.bool()
        is_clipped = ((ratio < 1 - clip_low) & (adv < 0)) | ((ratio > 1 + clip_high) & (adv > 0))
        clip_frac = is_clipped[m].float().mean().item() if m.any() else 0.0
        ratio_mean = ratio[m].mean().item() if m.any() else 1.0
    return loss, LossStats(loss.detach().item(), policy.detach().item(), float(kl_mean.detach()), clip_frac, ratio_mean)
