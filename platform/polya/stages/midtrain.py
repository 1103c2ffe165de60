"""Stage 3 — mid-training: SFT of the base model on the filtered traces, on Ray Train + DeepSpeed.

Each Ray Train worker is one DeepSpeed rank (gloo on CPU, NCCL on GPU) built by the learner skeleton
(`polya.rl.learner`). The prompt a trace is trained under is the plain question prompt that GRPO and
evaluation use (no heuristic instruction): the model learns to reach for the heuristics unasked. Loss on
response tokens only; warm-up + cosine schedule; gradient accumulation up to `batchSize` sequences per
optimizer step; ZeRO 0-3, bf16 or fp32.

Checkpoints (DeepSpeed's, with scheduler, data position, RNG and step counter) go to
``<storage>/checkpoints/midtrain/<key>/`` every `checkpointEvery` steps and at the end — outside the
artifact, so a crashed attempt resumes from them, on whichever node it reruns. The artifact holds
``model/`` (a Hugging Face folder the rollout engine loads), ``train_log.json`` and ``resumes.json`` (where
each resumed attempt started: step, epoch/batch, optimizer steps), pushed by rank 0; each log row carries the
attempt that computed it, the optimizer steps taken so far, its data position (epoch, micro-batches of the
epoch consumed) and the step its attempt resumed from. The workers read the filter's artifact by its URI
(`polya.artifacts.fetch_uri`), never a driver's path.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

from polya.recipe import Stage
from polya.rl.learner import Learner, LearnerJob, fit
from polya.spec import MidTrainingSpec
from polya.stages.common import StageContext, StageResult, log

SFT_FILE = "sft.parquet"


@dataclass(frozen=True)
class SFTJob:
    learner: LearnerJob
    train: MidTrainingSpec
    data_uri: str  # the filter's artifact (sft.parquet)
    few_shot: bool


@dataclass(frozen=True)
class Sizes:
    """How an epoch is cut: sequences per rank, micro-batches accumulated per step, steps in all."""

    per_rank: int
    grad_accum: int
    total_steps: int

    @classmethod
    def of(cls, examples: int, world: int, m: MidTrainingSpec) -> "Sizes":
        micro = m.microBatchSize
        per_rank = max(micro, examples // world)
        # accumulate up to batchSize sequences per step, but never over more micro-batches than an epoch has
        grad_accum = max(1, min(m.batchSize // (micro * world), per_rank // micro))
        steps_per_epoch = max(1, math.ceil(per_rank / (micro * grad_accum)))
        return cls(per_rank, grad_accum, steps_per_epoch * m.epochs)


def _examples(learner: Learner, job: SFTJob) -> list:
    import pyarrow.parquet as pq

    from polya.artifacts import fetch_uri
    from polya.heuristics import render_prompt
    from polya.rl.sft import build_example

    rows = pq.read_table(fetch_uri(job.data_uri) / SFT_FILE).to_pylist()
    built = (build_example(learner.tok, render_prompt(learner.tok, r["question"], None, few_shot=job.few_shot),
                           r["completion"], job.train.maxSeqLen) for r in rows)
    return [e for e in built if e is not None]


def epoch_batches(n_examples: int, seed: int, epoch: int, rank: int, world: int, micro: int) -> list[list[int]]:
    """This rank's micro-batches (example indices) in ``epoch``: the order is a function of (seed, epoch)."""
    order = list(range(n_examples))
    random.Random(seed + epoch).shuffle(order)
    while len(order) < world * micro:  # tiny datasets: repeat so every rank has a full micro-batch
        order += order
    per = len(order) // world  # equal shares keep the ranks' collectives in lockstep
    mine = order[rank::world][:per]
    return [mine[i : i + micro] for i in range(0, len(mine), micro)]


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train

    from polya.rl.sft import collate

    job: SFTJob = config["job"]
    m = job.train
    learner = Learner(m, job.learner, seed_per_rank=False)
    examples = _examples(learner, job)
    sizes = Sizes.of(len(examples), learner.world, m)
    learner.start(m.microBatchSize, sizes.grad_accum, sizes.total_steps)
    engine = learner.engine
    state = learner.resume() or {"step": 0, "epoch": 0, "batch": 0, "log": []}
    step, rows = state["step"], state["log"]
    resumed_from = step
    saved = step if learner.resumed is not None else None  # the newest step this training has in storage
    for epoch in range(state["epoch"], m.epochs):
        batches = epoch_batches(len(examples), job.learner.seed, epoch, learner.rank, learner.world, m.microBatchSize)
        losses: list[float] = []
        for b in range(state["batch"] if epoch == state["epoch"] else 0, len(batches)):
            out = engine(**collate([examples[i] for i in batches[b]], learner.pad_id))
            engine.backward(out.loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            losses.append(out.loss.item())
            if not boundary:
                continue
            step += 1
            row = {"step": step, "loss": sum(losses) / len(losses), "lr": learner.scheduler.get_last_lr()[0],
                   "epoch": epoch, "batch": b + 1, "resumed_from": resumed_from, **learner.stamp()}
            rows.append(row)
            losses = []
            ray.train.report(row)
            if step % m.checkpointEvery == 0:
                row["t_checkpoint"] = learner.checkpoint(step, {"epoch": epoch, "batch": b + 1, "log": rows})
                saved = step
            learner.crash_if_asked(step)
    final = {"epoch": m.epochs, "batch": 0, "log": rows}  # a resume from it skips the loop
    if saved == step:
        learner.restate_checkpoint(step, final)  # this step is in storage already
    else:
        learner.checkpoint(step, final)
    learner.save({"train_log.json": {"examples": len(examples), "steps": step, "grad_accum": sizes.grad_accum,
                                     "world": learner.world, "log": rows}})


def run(ctx: StageContext) -> StageResult:
    import pyarrow.parquet as pq

    from polya import storage

    m, spec = ctx.settings, ctx.run.spec
    art, cached = ctx.begin()
    if cached:
        return cached
    data = ctx.inputs[Stage.FILTER]
    if pq.read_metadata(data.fetch() / SFT_FILE).num_rows == 0:
        raise RuntimeError("mid-training has no data: filtering kept no trace (raise samplesPerHeuristic or check "
                           "the model's answers in filter/verdicts.parquet)")
    job = SFTJob(
        learner=ctx.learner_job(art, spec.model.name), train=m, data_uri=data.uri, few_shot=spec.heuristics.fewShot)
    fit(train_loop, job, m, f"{ctx.stage.name}-{art.key}", ctx.store.uri, "mid-training")
    train_log = storage.read_json(art.child("train_log.json"))
    rows = train_log["log"]
    figures = {"examples": train_log["examples"], "steps": train_log["steps"],
               "loss_first": rows[0]["loss"] if rows else float("nan"), "loss_last": rows[-1]["loss"] if rows else float("nan")}
    log.info("midtrain: %s", figures)
    ctx.store.commit(art, figures)
    ctx.committed_learner(job.learner)
    return StageResult(art.uri, figures)
