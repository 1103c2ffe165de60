"""One learner rank of `test_grpo_step.test_learn_over_two_ranks_is_the_gradient_of_the_whole_step`, run as
its own process (``python grpo_two_ranks.py RANK PORT MODEL MODE OUT``): a real two-rank gloo group, a real
DeepSpeed engine (SGD lr 1, no clipping, micro-batch 1), this rank's contiguous shard of the step's four
completions (MODE ``token+skip``: of the four left when `learned` drops a zero-signal group), `learn`, then
`mean_over_ranks`; saves the parameters after the step and the logged figures."""
from __future__ import annotations

import os
import sys
from types import SimpleNamespace


def main(rank: int, port: int, model_path: str, mode: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank), LOCAL_SIZE="2")
    import deepspeed
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    from polya.rl.deepspeed_config import deepspeed_config
    from polya.spec import GRPOSpec
    from polya.stages.grpo import learn, learned, mean_over_ranks, per_rank_share, seq_counts, shard
    from test_grpo_step import SEQS, TEMPERATURE, ZERO_GROUP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    skip = mode.endswith("+skip")  # the step also holds a zero-signal group, which `learned` leaves out
    mode = mode.removesuffix("+skip")
    step = SEQS + ZERO_GROUP if skip else SEQS
    g = GRPOSpec(mu=1, klCoef=0.0, microBatchSize=1, lossAggregation=mode, promptsPerStep=len(step) // 2,
                 groupSize=2, rollout={"temperature": TEMPERATURE, "maxTokens": 8})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    active = learned(step, g)  # as `grpo_step`: the 4 completions of SEQS, two per rank
    prepared = shard(active, rank, -(-len(active) // 2), g.microBatchSize, pad_id=0)  # two micro-batches of one
    # DeepSpeed is configured for the whole step's share (3 per rank with the zero group): the explicit
    # boundary in `learn` must still step after the rank's two micro-batches
    cfg = deepspeed_config(0, "fp32", micro_batch=1, grad_accum=per_rank_share(g, 2), max_grad_norm=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), config=cfg)
    figures = mean_over_ranks(learn(SimpleNamespace(engine=engine, world=2), g, prepared, [None] * 2, [None] * 2,
                                    seq_counts(step)), 2)
    torch.save({"params": {n: p.detach().clone() for n, p in engine.module.named_parameters()}, "figures": figures},
               out)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5])
