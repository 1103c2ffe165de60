"""One learner skeleton for SFT and GRPO: a DeepSpeed rank per Ray Train worker, set up from the typed
learner section, resumed from the latest complete checkpoint, checkpointed periodically, saved at the end.

The driver side (`fit`) starts the Ray Train workers; each runs a stage's loop, which builds a `Learner`
and keeps only what is its own (the SFT batches, the GRPO step). Checkpoints are DeepSpeed's (model,
optimizer, scheduler) plus, per rank, the torch RNG, and a state file (step, data position, log) that rank 0
writes last: a folder without it is incomplete and ignored.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from polya.spec import LearnerSpec

CKPT_STATE = "polya_state.json"
CKPT_TAG = "ds"


@dataclass(frozen=True)
class LearnerJob:
    """Where a learner reads and writes (the same for SFT and GRPO); crosses into Ray Train typed."""

    model_path: str  # the starting model (a Hugging Face folder)
    out_dir: str  # the stage's artifact folder: model/ and the stage's logs go there
    ckpt_root: str  # checkpoints: step_<N>/ folders
    seed: int
    crash_after_step: int = 0  # fault injection for resume tests (POLYA_CRASH_AFTER_STEP)


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint folder (its state file exists), or None."""
    done = sorted(p.parent for p in Path(ckpt_root).glob("step_*/" + CKPT_STATE))
    return max(done, key=lambda p: int(p.name.split("_")[1])) if done else None


def fit(loop: Callable[[dict], None], payload: Any, section: "LearnerSpec", name: str, storage: Path, what: str):
    """Run ``loop`` on ``section.workers`` Ray Train workers, each given ``{"job": payload}``. Raises
    RuntimeError("<what> failed: …") when training fails; the checkpoints stay for a rerun."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from polya.serve.launch import ensure_ray

    ensure_ray()
    gpus = section.gpusPerWorker
    trainer = TorchTrainer(
        loop, train_loop_config={"job": payload},
        scaling_config=ScalingConfig(num_workers=section.workers, use_gpu=gpus > 0,
                                     resources_per_worker={"GPU": gpus} if gpus else {"CPU": 1}),
        run_config=RunConfig(name=name, storage_path=str(Path(storage).resolve())),
    )
    try:
        result = trainer.fit()
    except Exception as exc:  # Ray Train raises TrainingFailedError
        raise RuntimeError(f"{what} failed: {exc}") from exc
    if result.error:
        raise RuntimeError(f"{what} failed: {result.error}")
    return result


class Learner:
    """This worker's rank: tokenizer and precision first (a loop sizes its schedule from its data), then
    `start` builds the model, optimizer, schedule and DeepSpeed engine."""

    def __init__(self, section: "LearnerSpec", job: LearnerJob, seed_per_rank: bool = True):
        import ray.train
        import torch
        from transformers import AutoTokenizer

        from polya.hardware import learner_setup

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.section, self.job = section, job
        torch.manual_seed(job.seed + (self.rank if seed_per_rank else 0))
        self.tok = AutoTokenizer.from_pretrained(job.model_path)
        self.precision, self.dtype = learner_setup(section.precision, section.gpusPerWorker, ctx.get_local_world_size())
        self.engine = self.scheduler = None

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def load_model(self, trainable: bool = True):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.job.model_path, dtype=self.dtype)
        if not trainable:
            return model.eval().requires_grad_(False)
        if self.section.gradientCheckpointing:
            model.gradient_checkpointing_enable()
            model.config.use_cache = False
        return model

    def start(self, micro: int, grad_accum: int, total_steps: int, min_lr_ratio: float = 0.0) -> None:
        """The trainable model under DeepSpeed: AdamW, warm-up + cosine over ``total_steps`` optimizer steps."""
        import deepspeed
        import torch

        from polya.rl.deepspeed_config import deepspeed_config
        from polya.rl.schedule import warmup_cosine

        s = self.section
        model = self.load_model()
        warmup = int(s.warmupRatio * total_steps)
        optimizer = torch.optim.AdamW(model.parameters(), lr=s.learningRate, weight_decay=s.weightDecay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total_steps, warmup, min_lr_ratio))
        ds = deepspeed_config(s.zeroStage, self.precision, micro, grad_accum, s.maxGradNorm, s.offloadOptimizer)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=ds)

    def resume(self) -> dict[str, Any] | None:
        """Load the latest complete checkpoint (model, optimizer, scheduler, RNG); its state, or None."""
        import torch

        latest = latest_checkpoint(Path(self.job.ckpt_root))
        if latest is None:
            return None
        self.engine.load_checkpoint(str(latest), tag=CKPT_TAG)
        torch.set_rng_state(torch.load(latest / f"rng_{self.rank}.pt"))
        return json.loads((latest / CKPT_STATE).read_text())

    def checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Collective: every rank writes its shards and RNG; rank 0 writes ``state`` last."""
        import torch

        target = Path(self.job.ckpt_root) / f"step_{step}"
        self.engine.save_checkpoint(str(target), tag=CKPT_TAG)
        torch.save(torch.get_rng_state(), target / f"rng_{self.rank}.pt")
        torch.distributed.barrier()
        if self.rank == 0:
            (target / CKPT_STATE).write_text(json.dumps({"step": step, **state}))
        torch.distributed.barrier()

    def crash_if_asked(self, step: int) -> None:
        if step == self.job.crash_after_step:
            raise RuntimeError(f"injected crash after step {step}")

    def save(self, files: dict[str, Any]) -> None:
        """The final model (gathered under ZeRO-3: collective) as a Hugging Face folder ``model/``, and
        ``files`` (name -> JSON-able) beside it, by rank 0."""
        import torch

        from polya.rl.weights import full_state_dict

        state = full_state_dict(self.engine.module)
        if self.rank == 0:
            out = Path(self.job.out_dir)
            self.engine.module.save_pretrained(str(out / "model"), state_dict=state, safe_serialization=True)
            self.tok.save_pretrained(str(out / "model"))
            for name, value in files.items():
                (out / name).write_text(json.dumps(value, indent=1))
        torch.distributed.barrier()
