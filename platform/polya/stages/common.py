"""What the stages share: their context, the rollout service, batched generation with progress."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

from polya.artifacts import Artifact, ArtifactStore
from polya.engines.base import EngineConfig, Sampling
from polya.spec import PolyaRun, RolloutSpec

log = logging.getLogger("polya")


@dataclass
class StageContext:
    run: PolyaRun
    store: ArtifactStore
    arm: str = "polya"
    inputs: dict[str, Artifact] = field(default_factory=dict)
    http_port: int = 8000
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())


def begin_stage(ctx: StageContext, stage: str, key: str):
    """(artifact, cached result): the cached result when the stage already completed, else a clean folder."""
    from polya.stages import StageResult

    art = ctx.store.artifact(stage, key)
    if art.exists():
        return art, StageResult(art.uri, art.manifest()["figures"], skipped=True)
    ctx.store.begin(art)
    return art, None


def engine_config(run: PolyaRun, model_path: str, block: RolloutSpec, served_name: str | None = None) -> EngineConfig:
    return EngineConfig(
        model=model_path,
        kind=block.engine,
        dtype=run.spec.model.dtype,
        max_model_len=run.spec.model.maxModelLen,
        max_num_seqs=block.maxNumSeqs,
        seed=run.spec.seed,
        served_name=served_name or model_path,
        enforce_eager=block.gpusPerReplica == 0,
        gpu_memory_utilization=gpu_memory_share(block.gpusPerReplica),
    )


def gpu_memory_share(gpus_per_replica: float, full: float = 0.85) -> float:
    """vLLM's ``gpu_memory_utilization`` for a replica holding ``gpus_per_replica`` of a GPU: a replica on half
    a card (a one-GPU box whose learner takes the other half) may take half of what a whole card allows."""
    return full * min(1.0, gpus_per_replica) if gpus_per_replica > 0 else full


@contextlib.contextmanager
def rollout_service(ctx: StageContext, cfg: EngineConfig, replicas: int, gpus: float, name: str) -> Iterator[Any]:
    """The rollout app for one model, up for the duration of a stage."""
    from ray import serve

    from polya.serve.launch import start_rollout

    t0 = time.perf_counter()
    handle = start_rollout(cfg.__dict__, replicas=replicas, gpus_per_replica=gpus, http_port=ctx.http_port,
                           name=name, route_prefix=f"/{name}")
    log.info("rollout app %s up in %.1fs (%s)", name, time.perf_counter() - t0, cfg.resolved_kind())
    try:
        yield handle
    finally:
        with contextlib.suppress(Exception):
            serve.delete(name)


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
            out = await call_with_retry(handle.generate, part, sampling.to_dict())
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
