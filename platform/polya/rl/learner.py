"""One learner skeleton for SFT and GRPO: a DeepSpeed rank per Ray Train worker, set up from the typed
learner section, resumed from the latest complete checkpoint, checkpointed periodically, saved at the end.

The driver side (`fit`) starts the Ray Train workers; each runs a stage's loop, which builds a `Learner`
and keeps only what is its own (the SFT batches, the GRPO step). Checkpoints are DeepSpeed's (model,
optimizer, scheduler) plus, per rank, the torch RNG, and a state file (step, data position, log) that rank 0
writes last: a folder without it is incomplete and ignored. The state file also carries the training's resumes
(`Learner.resumes`), which the final save writes as ``resumes.json``: a log then shows which attempt computed
each row and where every resumed attempt started.

Workers may run on other machines than the driver: the job carries storage URIs only. The starting
model is a reference each rank resolves on its node (`polya.models.resolve`); checkpoints are written in
the node's folder for ``<ckpt_uri>/step_<N>`` and pushed to storage (one rank per node pushes), the state
file last; `resume` finds the newest complete one in storage and fetches it once per node; the final model
and logs are pushed to the stage's artifact URI. On local storage all of this happens in place.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from polya.spec import LearnerSpec

CKPT_STATE = "polya_state.json"
CKPT_TAG = "ds"
RESUMES_FILE = "resumes.json"  # in a learner's artifact: every resume of its training (`Learner.resumes`)


def adamw(params, lr: float, weight_decay: float):
    """The learners' optimizer. Fused: one kernel over all parameters (transformers' default,
    "adamw_torch_fused", so TRL's too): 0.07 instead of 0.37 s per step over SmolLM2's 135M fp32 parameters on
    2 CPU cores (foreach)."""
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


@dataclass(frozen=True)
class LearnerJob:
    """Where a learner reads and writes (the same for SFT and GRPO); crosses into Ray Train typed."""

    model: str  # the starting model: a reference (`polya.models.resolve`) each rank resolves on its node
    out_uri: str  # the stage's artifact: model/ and the stage's logs go there
    ckpt_uri: str  # checkpoints: step_<N>/ folders
    seed: int
    crash_after_step: int = 0  # fault injection for resume tests (POLYA_CRASH_AFTER_STEP)
    keep_checkpoints: int | None = None  # newest complete checkpoints kept (`stale_checkpoints`); None: all
    revision: str | None = None  # hub revision of ``model``
    trust_remote_code: bool = False


def checkpoint_steps(ckpt_uri: str) -> list[int]:
    """The steps of the complete checkpoints (their state file exists) under ``ckpt_uri``, in order."""
    from polya import storage

    if not storage.exists(ckpt_uri):
        return []
    found = storage.listing(ckpt_uri)
    return sorted(int(rel.split("/")[0].split("_")[1]) for rel in found
                  if rel.startswith("step_") and rel.endswith("/" + CKPT_STATE))


def stale_checkpoints(complete: list[int], newest: int, keep: int | None) -> list[int]:
    """The complete checkpoints to delete once checkpoint ``newest`` is complete: those older than it beyond the
    ``keep`` newest (``newest`` counts as one; None: none). Never ``newest`` nor anything newer (another writer's).
    A crashed attempt's partial folder is left alone (deleting it could gut a concurrent writer's): a later save
    of its step replaces it, else it stays until deleteCheckpointsOnCommit."""
    if keep is None:
        return []
    old = sorted(s for s in complete if s < newest)
    return old[: max(0, len(old) - (keep - 1))]


def prune_checkpoints(ckpt_uri: str, newest: int, keep: int | None) -> list[int]:
    """Delete `stale_checkpoints` under ``ckpt_uri``, each state file first (a half-deleted folder is never taken
    for a complete checkpoint); returns the steps deleted. Nothing is listed when ``keep`` is None."""
    from polya import storage

    if keep is None:
        return []
    drop = stale_checkpoints(checkpoint_steps(ckpt_uri), newest, keep)
    for step in drop:
        folder = storage.join(ckpt_uri, f"step_{step}")
        storage.remove(storage.join(folder, CKPT_STATE))
        storage.remove(folder)
    return drop


def latest_checkpoint(ckpt_uri: str) -> str | None:
    """The URI of the newest complete checkpoint, or None."""
    from polya import storage

    steps = checkpoint_steps(ckpt_uri)
    return storage.join(ckpt_uri, f"step_{steps[-1]}") if steps else None


def train_storage(storage_uri: str) -> dict[str, Any]:
    """Ray Train's own run folder (``<storage>/ray``) as RunConfig arguments: on an object store through
    fsspec, so its bookkeeping never lands on one node's disk."""
    from polya import storage

    uri = storage.join(storage_uri, "ray")
    if not storage.is_remote(uri):
        return {"storage_path": str(storage.local_path(uri))}
    import pyarrow.fs

    fs, path = storage.filesystem(uri)
    return {"storage_path": path, "storage_filesystem": pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))}


def worker_runtime_env(section: "LearnerSpec") -> dict[str, Any]:
    """The learner workers' runtime environment. A CPU learner gets ``OMP_NUM_THREADS`` = its share of the
    cores (`polya.hardware.learner_threads` over this node's, where a local Ray runs them all): Ray sets it to
    a worker's reserved CPUs (1) before torch loads, and `use_learner_threads` raising torch's count later left
    the learner step ~10% slower than with the variable right from the start (SmolLM2 GRPO step, 2 cores: 9.3–10.6
    vs 8.3–8.8 s). GPU learners keep Ray's default."""
    from polya.hardware import learner_threads, usable_cpus

    if section.gpusPerWorker > 0:
        return {}
    return {"env_vars": {"OMP_NUM_THREADS": str(learner_threads(usable_cpus(), section.workers))}}


def fit(loop: Callable[[dict], None], payload: Any, section: "LearnerSpec", name: str, storage_uri: str, what: str):
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
        run_config=RunConfig(name=name, worker_runtime_env=worker_runtime_env(section), **train_storage(storage_uri)),
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
        from polya.models import resolve

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.node_leader = ctx.get_local_rank() == 0  # pushes this node's checkpoint files
        self.section, self.job = section, job
        torch.manual_seed(job.seed + (self.rank if seed_per_rank else 0))
        self.model_path = resolve(job.model, job.revision)
        self.tok = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=job.trust_remote_code)
        self.precision, self.dtype = learner_setup(section.precision, section.gpusPerWorker, ctx.get_local_world_size())
        self.engine = self.scheduler = None
        import uuid

        self.attempt = uuid.uuid4().hex[:8]  # this run of the loop: rows computed before a crash carry another
        self.resumed: dict[str, Any] | None = None  # what `resume` loaded (step, optimizer steps, checkpoint)
        self.resumes: list[dict[str, Any]] = []  # every resume of this training, oldest first (kept in checkpoints)

    @property
    def pad_id(self) -> int:
        return self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id

    def load_model(self, trainable: bool = True):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype,
                                                     trust_remote_code=self.job.trust_remote_code)
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
        optimizer = adamw(model.parameters(), s.learningRate, s.weightDecay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total_steps, warmup, min_lr_ratio))
        ds = deepspeed_config(s.zeroStage, self.precision, micro, grad_accum, s.maxGradNorm, s.offloadOptimizer)
        self.engine, _, _, self.scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 lr_scheduler=scheduler, config=ds)

    def resume(self) -> dict[str, Any] | None:
        """Load the latest complete checkpoint in storage (model, optimizer, scheduler, RNG); its state, or None.
        On an object store it is fetched once per node and every file checked against the hashes its
        writers pushed."""
        import torch

        from polya import storage

        latest = latest_checkpoint(self.job.ckpt_uri)
        if latest is None:
            return None
        folder = storage.fetch(latest, storage.parts(latest) if storage.is_remote(latest) else None)
        self.engine.load_checkpoint(str(folder), tag=CKPT_TAG)
        rng = torch.load(folder / f"rng_{self.rank}.pt", weights_only=False)
        torch.set_rng_state(rng["cpu"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        # from storage, not the node's copy: a copy is re-checked by the hashes of the pushed files, and the state
        # file is not one of them (`restate_checkpoint` rewrites it alone)
        state = storage.read_json(storage.join(latest, CKPT_STATE))
        # the data position the loop resumes at: the state's scalars (SFT: epoch, batch; GRPO has none)
        position = {k: v for k, v in state.items()
                    if k not in ("step", "log", "resumes") and not isinstance(v, (dict, list))}
        self.resumed = {"attempt": self.attempt, "from_step": int(state["step"]), "checkpoint": latest,
                        "optimizer_steps": int(self.engine.global_steps), "position": position}
        self.resumes = [*state.get("resumes", []), self.resumed]
        return state

    def stamp(self) -> dict[str, Any]:
        """Fields for a log row: the attempt that computed it and the optimizer steps taken so far (restored
        from the checkpoint on resume), so a log shows where a resumed attempt started."""
        return {"attempt": self.attempt, "optimizer_step": int(self.engine.global_steps)}

    def checkpoint(self, step: int, state: dict[str, Any]) -> float:
        """Collective: every rank writes its shards and RNG in its node's staging folder, one rank per node
        pushes them, then rank 0 writes ``state`` last. Returns the seconds spent getting the checkpoint into
        an object store (hashing, upload, state file), 0 on local storage (written in place)."""
        import time

        import torch

        from polya import storage

        uri = storage.join(self.job.ckpt_uri, f"step_{step}")
        remote = storage.is_remote(uri)
        target = storage.staging_dir(uri, "checkpoint")
        if remote and self.node_leader:
            storage.remove(str(target))  # a crashed attempt's files must not be pushed with these
        if remote and self.rank == 0:
            storage.remove(uri)  # nor the parts it pushed before dying
        torch.distributed.barrier()
        self.engine.save_checkpoint(str(target), tag=CKPT_TAG)
        cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
        torch.save({"cpu": torch.get_rng_state(), "cuda": cuda}, target / f"rng_{self.rank}.pt")
        torch.distributed.barrier()
        t0 = time.perf_counter()
        if remote and self.node_leader:
            storage.push(target, uri, skip=(CKPT_STATE,))
        torch.distributed.barrier()
        if self.rank == 0:
            self._write_state(step, state)
        torch.distributed.barrier()
        if remote and self.node_leader:
            storage.remove(str(target))  # storage holds it now; a resume fetches it back
        took = time.perf_counter() - t0 if remote else 0.0
        if self.rank == 0:
            self._prune(step)
        return took

    def _prune(self, newest: int) -> None:
        """keepCheckpoints: older complete checkpoints go once ``newest`` is complete. A storage error here is
        logged, never fatal: the training is sound, only the disk fuller."""
        try:
            dropped = prune_checkpoints(self.job.ckpt_uri, newest, self.job.keep_checkpoints)
        except Exception as exc:  # noqa: BLE001 - housekeeping
            print(f"checkpoint retention: could not delete old checkpoints under {self.job.ckpt_uri}: {exc}", flush=True)
            return
        if dropped:
            print(f"checkpoint retention: deleted steps {dropped} (keepCheckpoints={self.job.keep_checkpoints})",
                  flush=True)

    def restate_checkpoint(self, step: int, state: dict[str, Any]) -> None:
        """Rewrite the state of the complete checkpoint ``step`` (rank 0; atomic): a training that ends on a
        step it has just saved marks it final without saving again, which on an object store would delete
        the checkpoint before re-uploading it (with keepCheckpoints: 1 the only one)."""
        if self.rank == 0:
            self._write_state(step, state)

    def _write_state(self, step: int, state: dict[str, Any]) -> None:
        """The state file of checkpoint ``step``, written last: its presence makes the checkpoint complete."""
        from polya import storage

        uri = storage.join(self.job.ckpt_uri, f"step_{step}", CKPT_STATE)
        storage.write_json(uri, {"step": step, **state, "resumes": self.resumes})

    def crash_if_asked(self, step: int) -> None:
        if step == self.job.crash_after_step:
            raise RuntimeError(f"injected crash after step {step}")

    def save(self, files: dict[str, Any]) -> None:
        """The final model (gathered under ZeRO-3: collective) as a Hugging Face folder ``model/``, and
        ``files`` (name -> JSON-able) beside it with ``resumes.json`` (`resumes`: [] for a training that ran in
        one attempt), pushed to the stage's artifact by rank 0."""
        import torch

        from polya import storage
        from polya.rl.weights import full_state_dict

        state = full_state_dict(self.engine.module)
        if self.rank == 0:
            out = storage.staging_dir(self.job.out_uri, "learner")
            if storage.is_remote(self.job.out_uri):
                storage.remove(str(out))  # a crashed attempt's leftovers
            self.engine.module.save_pretrained(str(out / "model"), state_dict=state, safe_serialization=True)
            self.tok.save_pretrained(str(out / "model"))
            for name, value in {RESUMES_FILE: self.resumes, **files}.items():
                (out / name).write_text(json.dumps(value, indent=1))
            storage.push(out, self.job.out_uri)
            if storage.is_remote(self.job.out_uri):
                storage.remove(str(out))
        torch.distributed.barrier()
