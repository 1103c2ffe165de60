"""GRPO advantages and loss against hand-computed values (clip, KL, both aggregation modes)."""
from __future__ import annotations

import math

import pytest
import torch

from polya.rl.grpo import (aggregate, entropy, group_advantages, grpo_loss, k3_kl, logprobs_and_entropy,
                           token_logprobs, zero_signal_groups)


def test_advantages_scaled_and_unscaled():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0]])
    # group 0: mean 0.5, unbiased std sqrt(1/3)
    std = math.sqrt(((0.5 ** 2) * 4) / 3)
    a = group_advantages(r, scale=True, eps=0.0)
    assert a[0].tolist() == pytest.approx([0.5 / std, -0.5 / std, -0.5 / std, 0.5 / std])
    assert torch.isnan(a[1]).all()  # eps=0 on a zero-variance group: that is why eps exists
    a = group_advantages(r, scale=True)
    assert a[1].tolist() == [0.0] * 4
    assert group_advantages(r, scale=False)[0].tolist() == [0.5, -0.5, -0.5, 0.5]  # Dr. GRPO
    assert zero_signal_groups(r).tolist() == [False, True]
    with pytest.raises(ValueError):
        group_advantages(torch.ones(4))


def test_unclipped_on_policy_loss_is_minus_mean_advantage():
    # on-policy (ratio = 1): loss = -mean(A) over tokens; gradient flows
    logp = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.5]])).requires_grad_()
    mask = torch.tensor([[1, 1], [1, 0]])
    adv = torch.tensor([1.0, -2.0])
    loss, st = grpo_loss(logp, logp.detach(), adv, mask, aggregation="token")
    # token mode: tokens carry A = [1, 1, -2] -> -(1 + 1 - 2)/3 = 0
    assert loss.item() == pytest.approx(0.0) and st.clip_fraction == 0 and st.ratio_mean == pytest.approx(1.0)
    loss_seq, _ = grpo_loss(logp, logp.detach(), adv, mask, aggregation="sequence")
    # sequence mode: per-sequence means [-1, 2] -> mean 0.5
    assert loss_seq.item() == pytest.approx(0.5)
    loss_seq.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0


def test_clipping_low_and_high_separately():
    old = torch.zeros(1, 4)
    # ratios: 1.5, 0.5, 1.1, 0.9 ; advantage +1 on seq 0
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 0.9]]))
    mask = torch.ones(1, 4)
    loss, st = grpo_loss(logp, old, torch.tensor([1.0]), mask, clip_low=0.2, clip_high=0.28)
    # positive advantage: min(r, clamp(r, 0.8, 1.28)) -> [1.28, 0.5, 1.1, 0.9]
    assert loss.item() == pytest.approx(-(1.28 + 0.5 + 1.1 + 0.9) / 4)
    assert st.clip_fraction == pytest.approx(0.25)  # only the 1.5 token is clipped (above 1+0.28)
    loss, st = grpo_loss(logp, old, torch.tensor([-1.0]), mask, clip_low=0.2, clip_high=0.28)
    # negative advantage: -min(-r, -clamp(r)) = max(r, clamp(r)) -> [1.5, 0.8, 1.1, 0.9]
    assert loss.item() == pytest.approx((1.5 + 0.8 + 1.1 + 0.9) / 4)
    assert st.clip_fraction == pytest.approx(0.25)  # the 0.5 token (below 1-0.2)


def test_k3_kl_values_and_penalty():
    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.2]]))
    kl = k3_kl(logp, ref)
    # d = ref - logp = log(0.5) on token 0: exp(d) - d - 1 = 0.5 + log 2 - 1
    assert kl[0, 0].item() == pytest.approx(0.5 + math.log(2) - 1) and kl[0, 1].item() == pytest.approx(0.0)
    mask = torch.ones(1, 2)
    loss, st = grpo_loss(logp, logp, torch.tensor([0.0]), mask, ref_logp=ref, kl_coef=0.1)
    assert st.kl == pytest.approx((0.5 + math.log(2) - 1) / 2)
    assert loss.item() == pytest.approx(0.1 * st.kl)
    with pytest.raises(ValueError):
        grpo_loss(logp, logp, torch.tensor([0.0]), mask, kl_coef=0.1)


def test_aggregate_modes_differ_on_unequal_lengths():
    per = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    assert aggregate(per, mask, "token").item() == pytest.approx(8 / 5)
    assert aggregate(per, mask, "sequence").item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError):
        aggregate(per, mask, "mean")


def test_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0]]])
    labels = torch.tensor([[1, 0]])
    assert token_logprobs(logits, labels)[0].tolist() == pytest.approx([math.log(0.5), math.log(0.75)])
    assert entropy(logits)[0, 0].item() == pytest.approx(math.log(2))
    # one log-softmax for both: the same numbers, the entropy outside the graph
    lp, ent = logprobs_and_entropy(logits.requires_grad_(), labels)
    assert lp[0].tolist() == pytest.approx([math.log(0.5), math.log(0.75)])
    p = torch.tensor([0.75, 0.25])
    assert ent[0].tolist() == pytest.approx([math.log(2), float(-(p * p.log()).sum())])
    assert lp.requires_grad and not ent.requires_grad
