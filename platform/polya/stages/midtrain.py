"""Stage 3 — mid-training: SFT of the base model on the filtered traces, on Ray Train + DeepSpeed.

Each Ray Train worker is one DeepSpeed rank (gloo on CPU, NCCL on GPU). The prompt a trace is trained
under is the plain question prompt that GRPO and evaluation use (no heuristic instruction): the model
learns to reach for the heuristics unasked. Loss on response tokens only; warm-up + cosine schedule;
gradient accumulation up to `batchSize` sequences per optimizer step; ZeRO 0-3, bf16 or fp32.

Checkpoints (DeepSpeed's, with scheduler, data order, RNG and step counter) go to
``<storage>/checkpoints/midtrain/<key>/`` every `checkpointEvery` steps and at the end — outside the
artifact folder, so a crashed attempt resumes from them. The artifact holds ``model/`` (a Hugging Face
folder the rollout engine loads) and ``train_log.json``.
"""
from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path
from typing import Any

from polya.artifacts import stage_key
from polya.stages import StageResult
from polya.stages.common import StageContext, begin_stage, log

CKPT_STATE = "polya_state.json"


def key(ctx: StageContext) -> str:
    m = ctx.run.spec.midTraining
    slice_ = {"model": ctx.run.spec.model.model_dump(), "fewShot": ctx.run.spec.heuristics.fewShot,
              "train": m.model_dump(exclude={"workers", "gpusPerWorker", "inputUri", "enabled", "checkpointEvery"}),
              "seed": ctx.run.spec.seed}
    return stage_key("midtrain", slice_, {"filter": ctx.inputs["filter"].key})


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted(p.parent for p in ckpt_root.glob("step_*/" + CKPT_STATE))
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def train_loop(config: dict[str, Any]) -> None:
    """Runs in every Ray Train worker."""
    import deepspeed
    import pyarrow.parquet as pq
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from polya.hardware import learner_setup
    from polya.heuristics import render_prompt
    from polya.rl.deepspeed_config import deepspeed_config
    from polya.rl.schedule import warmup_cosine
    from polya.rl.sft import build_example, collate

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    m = config["train"]
    torch.manual_seed(config["seed"])
    tok = AutoTokenizer.from_pretrained(config["model_path"])
    precision, dtype = learner_setup(m["precision"], m["gpusPerWorker"], ctx.get_local_world_size())
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype)
    if m["gradientCheckpointing"]:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False

    rows = pq.read_table(config["sft_path"]).to_pylist()
    examples = [e for e in (build_example(tok, render_prompt(tok, r["question"], None, few_shot=config["few_shot"]),
                                          r["completion"], m["maxSeqLen"]) for r in rows) if e is not None]
    micro = m["microBatchSize"]
    per_rank = max(micro, len(examples) // world)
    # accumulate up to batchSize sequences per step, but never over more micro-batches than an epoch has
    grad_accum = max(1, min(m["batchSize"] // (micro * world), per_rank // micro))
    steps_per_epoch = max(1, math.ceil(per_rank / (micro * grad_accum)))
    total_steps = steps_per_epoch * m["epochs"]
    warmup = int(m["warmupRatio"] * total_steps)

    optimizer = torch.optim.AdamW(model.parameters(), lr=m["learningRate"], weight_decay=m["weightDecay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total_steps, warmup))
    ds = deepspeed_config(m["zeroStage"], precision, micro, grad_accum, m["maxGradNorm"], m["offloadOptimizer"])
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                           config=ds)

    ckpt_root = Path(config["ckpt_root"])
    step, start_epoch, start_batch, log_rows = 0, 0, 0, []
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        engine.load_checkpoint(str(latest), tag="ds")  # model, optimizer and scheduler
        state = json.loads((latest / CKPT_STATE).read_text())
        step, start_epoch, start_batch, log_rows = state["step"], state["epoch"], state["batch"], state["log"]
        torch.set_rng_state(torch.load(latest / f"rng_{rank}.pt"))

    def save(epoch: int, batch: int) -> None:
        target = ckpt_root / f"step_{step}"
        engine.save_checkpoint(str(target), tag="ds")  # collective: every rank writes its shards
        torch.save(torch.get_rng_state(), target / f"rng_{rank}.pt")
        torch.distributed.barrier()
        if rank == 0:  # written last: a checkpoint without it is incomplete and ignored
            (target / CKPT_STATE).write_text(json.dumps({"step": step, "epoch": epoch, "batch": batch, "log": log_rows}))
        torch.distributed.barrier()

    for epoch in range(start_epoch, m["epochs"]):
        order = list(range(len(examples)))
        random.Random(config["seed"] + epoch).shuffle(order)  # data order is a function of (seed, epoch)
        while len(order) < world * micro:  # tiny datasets: repeat so every rank has a full micro-batch
            order += order
        per = len(order) // world  # equal shares keep the ranks' collectives in lockstep
        mine = order[rank::world][:per]
        batches = [mine[i : i + micro] for i in range(0, len(mine), micro)]
        losses: list[float] = []
        first = start_batch if epoch == start_epoch else 0
        for b in range(first, len(batches)):
            batch = collate([examples[i] for i in batches[b]], tok.pad_token_id or tok.eos_token_id)
            out = engine(**batch)
            engine.backward(out.loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            losses.append(out.loss.item())
            if boundary:
                step += 1
                row = {"step": step, "loss": sum(losses) / len(losses), "lr": scheduler.get_last_lr()[0], "epoch": epoch}
                log_rows.append(row)
                losses = []
                ray.train.report(row)
                if step % m["checkpointEvery"] == 0:
                    save(epoch, b + 1)
                if step == config.get("crash_after_step"):  # fault injection for the resume test
                    raise RuntimeError(f"injected crash after step {step}")
    save(m["epochs"], 0)
    from polya.rl.weights import full_state_dict

    state = full_state_dict(engine.module)  # collective under ZeRO-3
    if rank == 0:
        out_dir = Path(config["out_dir"]) / "model"
        engine.module.save_pretrained(str(out_dir), state_dict=state, safe_serialization=True)
        tok.save_pretrained(str(out_dir))
        (Path(config["out_dir"]) / "train_log.json").write_text(json.dumps(
            {"examples": len(examples), "steps": step, "grad_accum": grad_accum, "world": world, "log": log_rows}))
    torch.distributed.barrier()


def run(ctx: StageContext) -> StageResult:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from polya.models import resolve
    from polya.serve.launch import ensure_ray

    m = ctx.run.spec.midTraining
    art, cached = begin_stage(ctx, "midtrain", key(ctx))
    if cached:
        return cached
    storage_root = Path(ctx.store.root)
    ckpt_root = storage_root / "checkpoints" / "midtrain" / art.key
    ckpt_root.mkdir(parents=True, exist_ok=True)
    sft_path = ctx.inputs["filter"].local / "sft.parquet"
    import pyarrow.parquet as pq

    n = pq.read_metadata(sft_path).num_rows
    if n == 0:
        raise RuntimeError("mid-training has no data: filtering kept no trace (raise samplesPerHeuristic or check "
                           "the model's answers in filter/verdicts.parquet)")
    ensure_ray()
    gpus = m.gpusPerWorker
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "model_path": resolve(ctx.run.spec.model.name), "sft_path": str(sft_path), "out_dir": str(art.local),
            "ckpt_root": str(ckpt_root), "train": m.model_dump(), "seed": ctx.run.spec.seed,
            "few_shot": ctx.run.spec.heuristics.fewShot,
            "crash_after_step": int(os.environ.get("POLYA_CRASH_AFTER_STEP", "0")),  # tests only
        },
        scaling_config=ScalingConfig(num_workers=m.workers, use_gpu=gpus > 0,
                                     resources_per_worker={"GPU": gpus} if gpus else {"CPU": 1}),
        run_config=RunConfig(name=f"midtrain-{art.key}", storage_path=str((storage_root / "ray").resolve())),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train raises TrainingFailedError; the checkpoints stay for a rerun
        raise RuntimeError(f"mid-training failed: {exc}") from exc
    if result.error:
        raise RuntimeError(f"mid-training failed: {result.error}")
    train_log = json.loads((art.local / "train_log.json").read_text())
    rows = train_log["log"]
    figures = {"examples": train_log["examples"], "steps": train_log["steps"],
               "loss_first": rows[0]["loss"] if rows else float("nan"), "loss_last": rows[-1]["loss"] if rows else float("nan")}
    log.info("midtrain: %s", figures)
    ctx.store.commit(art, figures)
    return StageResult(art.uri, figures)
