"""The GRPO step by the book, each against a hand-computed value:

* the learner's logprobs (old, reference, current) are those of softmax(logits / T) at the rollout's
  sampling temperature T;
* the loss is normalised over the whole step — every completion of every micro-batch — whatever the
  micro-batch size (``token``: completion tokens, ``sequence``: completions, ``constant``: Dr. GRPO's
  completions × maxTokens), checked through a real DeepSpeed engine with gradient accumulation: the
  update equals the gradient of the step's loss computed in one piece by autograd — on one rank, and on
  two ranks, where DeepSpeed averages the ranks' gradients and `learn` scales each backward by the world;
* a step's prompts go out in concurrent calls that cover every replica.

Each fails on the code before these fixes (logprobs at T = 1, a per-micro-batch normaliser, one call).
"""
from __future__ import annotations

import copy
import socket
from types import SimpleNamespace

import pytest
import torch

from polya.rl.rollout_batch import pack, response_logits, response_logprobs
from polya.spec import GRPOSpec

# two groups of two completions, unequal lengths (the case where the aggregations differ)
SEQS = [
    {"prompt_ids": [5, 6, 7], "ids": [8, 9, 10, 11], "adv": 1.0},
    {"prompt_ids": [5, 6, 7], "ids": [12], "adv": -1.0},
    {"prompt_ids": [20, 21], "ids": [22, 23], "adv": 0.5},
    {"prompt_ids": [20, 21], "ids": [24, 25, 26], "adv": -0.5},
]
TEMPERATURE = 0.7  # the rollout temperature of the learn tests


def _model(tiny_model):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)


def test_step_normaliser_over_micro_batches_by_hand():
    """On-policy (ratio 1) the per-token term is -A. Two micro-batches: [len 4, A=1] and [len 1, A=-2]."""
    from polya.rl.grpo import grpo_loss, step_normaliser

    mb1 = (torch.zeros(1, 4), torch.ones(1, 4), torch.tensor([1.0]))
    mb2 = (torch.zeros(1, 1), torch.ones(1, 1), torch.tensor([-2.0]))

    def step_loss(mode: str) -> float:
        norm = step_normaliser(tokens=5, completions=2, mode=mode, max_tokens=8)
        return sum(grpo_loss(lp, lp, adv, m, aggregation=mode, normaliser=norm, max_tokens=8)[0].item()
                   for lp, m, adv in (mb1, mb2))

    assert step_loss("token") == pytest.approx(-(4 * 1 + 1 * -2) / 5)  # -0.4: over the step's 5 tokens
    assert step_loss("sequence") == pytest.approx(-(1 + -2) / 2)  # 0.5: per completion, then over 2
    assert step_loss("constant") == pytest.approx(-(4 * 1 + 1 * -2) / (2 * 8))  # -0.125: Dr. GRPO
    # the old per-micro-batch normalisation averaged each micro-batch's own token mean: (-1 + 2) / 2
    per_mb = sum(grpo_loss(lp, lp, adv, m, aggregation="token")[0].item() for lp, m, adv in (mb1, mb2)) / 2
    assert per_mb == pytest.approx(0.5) and per_mb != pytest.approx(step_loss("token"))
    with pytest.raises(ValueError, match="max_tokens"):
        step_normaliser(5, 2, "constant")


def test_learner_logprobs_at_the_rollout_temperature(tiny_model):
    from polya.stages.grpo import reference_logprobs

    model = _model(tiny_model).eval()
    batch = pack(SEQS, pad_id=0)
    g = GRPOSpec(mu=2, rollout={"temperature": 0.5, "maxTokens": 8})
    olds, refs = reference_logprobs(SimpleNamespace(engine=SimpleNamespace(module=model)), model, g, [batch])
    with torch.no_grad():
        logits = response_logits(model, batch).float()
    want = torch.log_softmax(logits / 0.5, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    at_one = torch.log_softmax(logits, -1).gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1)
    m = batch.mask.bool()
    _, ent = response_logprobs(model, batch, want_entropy=True, temperature=0.5)
    probs = torch.softmax(logits / 0.5, -1)
    assert torch.allclose(ent[m], -(probs * torch.log(probs)).sum(-1)[m], atol=1e-4)  # the entropy at T as well
    for got in (olds[0], refs[0]):
        assert torch.allclose(got[m], want[m], atol=1e-5)
        assert not torch.allclose(got[m], at_one[m], atol=1e-3)  # T = 1 is a different policy here
    # by hand, one token: log softmax(z / T)_y for the first response token of the first sequence
    z, y = logits[0, 0], SEQS[0]["ids"][0]
    assert olds[0][0, 0].item() == pytest.approx((z[y] / 0.5 - torch.logsumexp(z / 0.5, -1)).item(), abs=1e-5)
    with pytest.raises(Exception, match="temperature must be > 0"):
        GRPOSpec(rollout={"temperature": 0.0})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def dist_world_of_one():
    """A one-rank torch.distributed group (gloo), as Ray Train gives each learner, for the module (DeepSpeed
    keeps the group it first saw); torn down after."""
    import os

    import torch.distributed as dist

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "LOCAL_SIZE": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _whole_step(reference, mode: str, seqs: list[dict] = SEQS):
    """(the step's loss over all of ``seqs`` in one piece, by autograd, and its gradient per parameter)."""
    from polya.rl.grpo import aggregate, token_logprobs

    whole = pack(seqs, pad_id=0)
    lp = token_logprobs(response_logits(reference, whole), whole.response_ids, temperature=TEMPERATURE)
    per_token = -torch.exp(lp - lp.detach()) * whole.advantages.unsqueeze(-1)
    loss = aggregate(per_token, whole.mask, mode, **({"max_tokens": 8} if mode == "constant" else {}))
    loss.backward()
    return loss, {n: p.grad for n, p in reference.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["token", "sequence", "token+skip"])
def test_learn_over_two_ranks_is_the_gradient_of_the_whole_step(tiny_model, tmp_path, mode):
    """Two real learner processes (gloo, DeepSpeed, SGD lr 1), each with two of the step's four completions:
    both ranks' parameters move by exactly minus the gradient of the whole step's loss, and the logged loss
    is the whole step's. Without the ×world scaling of each backward (DeepSpeed averages gradients over
    ranks) the update is half of it; with a per-rank normaliser, the token loss is another figure.
    ``token+skip``: the step also holds a zero-signal group that no rank runs (DeepSpeed configured for 3
    micro-batches per rank, given 2): still the whole 6-completion step's gradient, on both ranks."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).parent
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(here / "grpo_two_ranks.py"), str(rank), str(port), str(tiny_model),
                               mode, str(tmp_path / f"rank{rank}.pt")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    reference = _model(tiny_model)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    loss, grads = _whole_step(reference, mode.removesuffix("+skip"), SEQS + ZERO_GROUP if "skip" in mode else SEQS)
    for rank in (0, 1):
        saved = torch.load(tmp_path / f"rank{rank}.pt")
        moved = {n: before[n] - saved["params"][n] for n in grads}
        assert all(torch.allclose(moved[n], grads[n], atol=1e-5, rtol=1e-4) for n in grads), f"rank {rank}"
        assert saved["figures"]["loss"] == pytest.approx(loss.item(), abs=1e-6)
    assert max(float(v.abs().max()) for v in grads.values()) > 1e-4


@pytest.mark.parametrize("mode", ["token", "sequence", "constant"])
def test_learn_normalises_over_the_whole_step_through_deepspeed(tiny_model, dist_world_of_one, mode):
    """`learn` on a real DeepSpeed engine (SGD, lr 1, no clipping, micro-batch 1 → 4 accumulation steps):
    the parameters move by exactly minus the gradient of the step's loss over all 4 completions, computed
    in one piece by autograd at the rollout temperature."""
    import deepspeed

    from polya.rl.deepspeed_config import deepspeed_config
    from polya.stages.grpo import learn

    g = GRPOSpec(mu=1, klCoef=0.0, microBatchSize=1, lossAggregation=mode,
                 rollout={"temperature": TEMPERATURE, "maxTokens": 8})
    model = _model(tiny_model)
    reference = copy.deepcopy(model)
    prepared = [pack([s], pad_id=0) for s in SEQS]  # four micro-batches of one completion
    cfg = deepspeed_config(0, "fp32", micro_batch=1, grad_accum=len(prepared), max_grad_norm=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=cfg)
    before = {n: p.detach().clone() for n, p in reference.named_parameters()}
    figures = learn(SimpleNamespace(engine=engine, world=1), g, prepared, [None] * 4, [None] * 4)

    # the step's loss in one piece: on-policy, so loss = aggregate(-A * exp(lp - lp.detach())) = -A·lp terms
    loss, grads = _whole_step(reference, mode)
    moved = {n: before[n] - p.detach() for n, p in engine.module.named_parameters()}
    assert grads and all(torch.allclose(moved[n], grads[n], atol=1e-5, rtol=1e-4) for n in grads)
    assert figures[0].item() == pytest.approx(loss.item(), abs=1e-6)  # the step's loss, as logged
    # hand-computed normalisers of these 4 completions (lengths 4, 1, 2, 3): the loss is -Σ A·ratio / N
    tokens = sum(len(s["ids"]) for s in SEQS)
    expected = {"token": -sum(s["adv"] * len(s["ids"]) for s in SEQS) / tokens,
                "sequence": -sum(s["adv"] for s in SEQS) / 4,
                "constant": -sum(s["adv"] * len(s["ids"]) for s in SEQS) / (4 * 8)}[mode]
    assert loss.item() == pytest.approx(expected)  # (0 for sequence: each group's advantages sum to 0)
    assert max(float(v.abs().max()) for v in grads.values()) > 1e-4  # and yet the update is not trivial


# SEQS plus a zero-signal group: every loss term of its completions is 0 x something
ZERO_GROUP = [{"prompt_ids": [30, 31], "ids": [32, 33, 34], "adv": 0.0},
              {"prompt_ids": [30, 31], "ids": [35, 36], "adv": 0.0}]


def test_learned_skips_exactly_the_completions_that_add_nothing():
    from polya.stages.grpo import learned, seq_counts

    g = GRPOSpec(klCoef=0.0)
    assert learned(SEQS + ZERO_GROUP, g) == SEQS
    assert learned(SEQS + ZERO_GROUP, GRPOSpec(klCoef=0.01)) == SEQS + ZERO_GROUP  # the KL term has a gradient
    assert learned(ZERO_GROUP, g) == ZERO_GROUP[:1]  # one zero-gradient pass keeps the optimizer's step
    assert seq_counts(SEQS + ZERO_GROUP) == (15.0, 6.0)


def test_skipped_completions_still_normalise_the_step(tiny_model, dist_world_of_one):
    """Two steps of `learn` on a DeepSpeed engine configured for all 6 completions (micro-batch 1: 6
    accumulation steps) but given only the 4 that `learned` keeps: each step moves the parameters by exactly
    minus the gradient of the whole 6-completion step's loss (the zero group's 5 tokens in the normaliser).
    Fails without the explicit accumulation boundary (4 micro-batches never reach DeepSpeed's 6: no update)
    and with a normaliser over the learned completions only."""
    import deepspeed

    from polya.rl.deepspeed_config import deepspeed_config
    from polya.stages.grpo import learn, learned, seq_counts

    g = GRPOSpec(mu=1, klCoef=0.0, microBatchSize=1, lossAggregation="token",
                 rollout={"temperature": TEMPERATURE, "maxTokens": 8})
    step = SEQS + ZERO_GROUP
    model = _model(tiny_model)
    reference = copy.deepcopy(model)
    prepared = [pack([s], pad_id=0) for s in learned(step, g)]
    assert len(prepared) == 4
    cfg = deepspeed_config(0, "fp32", micro_batch=1, grad_accum=len(step), max_grad_norm=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=cfg)
    for n_step in (1, 2):
        before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
        reference.load_state_dict(engine.module.state_dict())
        reference.zero_grad(set_to_none=True)
        loss, grads = _whole_step(reference, "token", step)
        figures = learn(SimpleNamespace(engine=engine, world=1), g, prepared, [None] * 4, [None] * 4,
                        seq_counts(step))
        moved = {n: before[n] - p.detach() for n, p in engine.module.named_parameters()}
        assert grads and all(torch.allclose(moved[n], grads[n], atol=1e-5, rtol=1e-4) for n in grads), n_step
        assert figures[0].item() == pytest.approx(loss.item(), abs=1e-6)
        assert max(float(v.abs().max()) for v in moved.values()) > 1e-4
    assert engine.global_steps == 2


def test_a_step_is_split_over_every_replica():
    from polya.stages.grpo import replica_shares

    assert replica_shares(64, 1) == [(0, 64)]
    assert replica_shares(64, 2) == [(0, 32), (32, 64)]
    assert replica_shares(5, 2) == [(0, 3), (3, 5)]
    assert replica_shares(3, 8) == [(0, 1), (1, 2), (2, 3)]  # more replicas than prompts: one prompt each
    for prompts, replicas in ((64, 4), (7, 3), (9, 8)):
        shares = replica_shares(prompts, replicas)
        assert shares[0][0] == 0 and shares[-1][1] == prompts and len(shares) == min(prompts, replicas)
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))  # consecutive, no gaps or overlaps
        sizes = [b - a for a, b in shares]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_a_short_shard_is_filled_with_copies_that_count_nowhere():
    """5 completions over 2 ranks (3 each): rank 1 runs 2 real completions and 1 masked copy; the step's
    counts are those of the 5 real completions (a copy counted twice would skew the gradient)."""
    from polya.stages.grpo import per_rank_share, shard, step_counts

    g = GRPOSpec(promptsPerStep=1, groupSize=5)
    seqs = [{"prompt_ids": [5, 6], "ids": list(range(10, 10 + n)), "adv": float(n)} for n in (1, 2, 3, 4, 5)]
    per = per_rank_share(g, 2)
    assert per == 3
    r0, r1 = shard(seqs, 0, per, 4, 0), shard(seqs, 1, per, 4, 0)
    assert [b.real.tolist() for b in r0] == [[1.0, 1.0, 1.0]] and [b.real.tolist() for b in r1] == [[1.0, 1.0, 0.0]]
    assert r1[0].mask.sum(-1).tolist() == [4, 5, 0]  # the copy runs masked out
    tokens = [step_counts(r) for r in (r0, r1)]  # one rank each (no process group): summed by hand
    assert (tokens[0][0] + tokens[1][0], tokens[0][1] + tokens[1][1]) == (1 + 2 + 3 + 4 + 5, 5)
