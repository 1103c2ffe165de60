"""What the stages share: their context (typed settings, inputs, cache key), the rollout service, batched
generation with progress."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from polya.artifacts import Artifact, ArtifactStore
from polya.engines.base import EngineConfig, Sampling
from polya.recipe import ARMS, STAGES, Arm, ArmDef, Stage, StageDef, cache_key
from polya.rl.learner import LearnerJob
from polya.spec import EngineSpec, ModelSpec, PolyaRun

log = logging.getLogger(__package__.split(".")[0])


@dataclass
class StageResult:
    artifact_uri: str
    figures: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # the artifact already existed (content-addressed resume)


@dataclass
class StageContext:
    """One step (arm, stage) of a run: its typed settings, its input artifacts, where its output goes."""

    run: PolyaRun
    store: ArtifactStore
    stage: StageDef | Stage | str
    arm: ArmDef | Arm | str = Arm.POLYA
    inputs: dict[str, Artifact] = field(default_factory=dict)
    http_port: int = 8000
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())
    _lease: Any = field(default=None, init=False, repr=False)  # `polya.lease.Lease` while this step computes

    def __post_init__(self) -> None:
        if not isinstance(self.stage, StageDef):
            self.stage = STAGES[Stage(self.stage)]
        if not isinstance(self.arm, ArmDef):
            self.arm = ARMS[Arm(self.arm)]

    @property
    def settings(self) -> Any:
        """This stage's own section of the spec (typed)."""
        return self.stage.settings(self.run.spec)

    def key(self) -> str:
        ids = {slot: f"{art.stage}:{art.key}" for slot, art in self.inputs.items()}
        return cache_key(self.stage, self.run.spec, self.arm, ids)

    def artifact(self) -> Artifact:
        return self.store.artifact(self.stage.name, self.key())

    def begin(self) -> tuple[Artifact, StageResult | None]:
        """(artifact, cached result): the cached result when the step already completed, else a clean folder.
        Another run computing the same artifact right now (its lease is live) is waited for: its result is
        then this step's cache hit (`polya.lease`). The lease is this step's until `release`."""
        from polya.lease import Lease, lease_uri

        art = self.artifact()
        if not art.exists():
            lease = Lease(lease_uri(self.store.uri, self.stage.name, art.key), run=self.run.metadata.name)
            if lease.acquire(art.exists):
                self._lease = lease
                self.store.begin(art)
                return art, None
        return art, StageResult(art.uri, art.manifest()["figures"], skipped=True)

    def release(self) -> None:
        """The step ended (committed or failed): its lease, if it took one, is given up."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def learner_job(self, art: Artifact, model: str) -> LearnerJob:
        """Where this stage's learners start (``model``: a reference) and write (``art``, its checkpoints)."""
        spec = self.run.spec
        return LearnerJob(model=model, revision=spec.model.revision_for(model),
                          trust_remote_code=spec.model.trustRemoteCode, out_uri=art.uri,
                          ckpt_uri=self.store.child("checkpoints", self.stage.name, art.key), seed=spec.seed,
                          keep_checkpoints=self.settings.keepCheckpoints,
                          crash_after_step=int(os.environ.get("POLYA_CRASH_AFTER_STEP", "0")))  # tests only

    def committed_learner(self, job: LearnerJob) -> None:
        """After a learner stage's commit: its checkpoints go where the settings say so (deleteCheckpointsOnCommit)."""
        if self.settings.deleteCheckpointsOnCommit:
            from polya import storage

            try:
                storage.remove(job.ckpt_uri)
            except Exception as exc:  # noqa: BLE001 - the stage is committed; only the disk stays fuller
                log.warning("deleteCheckpointsOnCommit: could not delete %s: %s", job.ckpt_uri, exc)

    def engine(self, block: EngineSpec, model_path: str, served_name: str | None = None,
               model: ModelSpec | None = None) -> EngineConfig:
        """``block``'s engine for ``model_path``; ``model`` (default the run's) gives dtype, context and revision."""
        return EngineConfig.from_spec(model or self.run.spec.model, block, model_path, self.run.spec.seed, served_name)


@contextlib.contextmanager
def rollout_service(ctx: StageContext, cfg: EngineConfig, block: EngineSpec, name: str) -> Iterator[Any]:
    """The rollout app for one model, up for the duration of a stage (``block``: replicas and GPUs)."""
    from ray import serve

    from polya.serve.launch import start_rollout

    t0 = time.perf_counter()
    handle = start_rollout(cfg, replicas=block.replicas, gpus_per_replica=block.gpusPerReplica,
                           http_port=ctx.http_port, name=name, route_prefix=f"/{name}")
    log.info("rollout app %s up in %.1fs (%s)", name, time.perf_counter() - t0, cfg.resolved_kind())
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)


def seeded_from(sampling: Sampling, start: int) -> Sampling:
    """``sampling`` for a call whose first prompt is prompt ``start`` of a larger batch. Engines seed prompt
    ``i`` of a call with ``seed + i``; offsetting each call's seed by its start gives every prompt of the
    batch its own seed, the same one however the batch is split into calls."""
    return sampling if sampling.seed is None else replace(sampling, seed=sampling.seed + start)


async def generate_all(handle, prompts: list[str], sampling: Sampling, *, chunk: int = 16, concurrency: int = 4,
                       desc: str = "generate", progress: bool = False) -> tuple[list[list[dict]], float]:
    """All completions for ``prompts`` (in order) through the rollout handle, and the wall time."""
    from tqdm.auto import tqdm

    from polya.serve.launch import call_with_retry

    sem = asyncio.Semaphore(concurrency)
    results: list[list[dict] | None] = [None] * len(prompts)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, unit="prompt")

    async def one(start: int) -> None:
        async with sem:
            part = prompts[start : start + chunk]
            out = await call_with_retry(handle.generate, part, seeded_from(sampling, start))
            results[start : start + len(part)] = out
            bar.update(len(part))

    t0 = time.perf_counter()
    await asyncio.gather(*[one(s) for s in range(0, len(prompts), chunk)])
    bar.close()
    return results, time.perf_counter() - t0  # type: ignore[return-value]


def run_async(coro):
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    raise RuntimeError("stages are entered from synchronous code")
