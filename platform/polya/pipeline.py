"""The embedded runner: which stages a PolyaRun needs, in order, and running them on this machine.

Arms: ``polya`` (the recipe), ``base`` (evaluation of the untouched model) and the baselines of
``spec.baselines`` — ``vanilla`` (GRPO from the base model) and ``star`` (STaR traces, then SFT + GRPO).
An arm only lists the stages it does not share with another arm; artifacts are shared by content address.
"""
from __future__ import annotations

from dataclasses import dataclass

from polya.spec import PolyaRun, PolyaRunSpec


@dataclass(frozen=True)
class PlannedStage:
    arm: str
    stage: str

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.stage}"


def plan(spec: PolyaRunSpec) -> list[PlannedStage]:
    steps: list[PlannedStage] = [PlannedStage("base", "evaluate")]
    recipe = ["selfgen", "filter"]
    if spec.midTraining.enabled:
        recipe.append("midtrain")
    if spec.grpo.enabled:
        recipe.append("grpo")
    recipe.append("evaluate")
    steps += [PlannedStage("polya", s) for s in recipe]
    if "vanilla" in spec.baselines and spec.grpo.enabled:
        steps += [PlannedStage("vanilla", "grpo"), PlannedStage("vanilla", "evaluate")]
    if "star" in spec.baselines:
        steps += [PlannedStage("star", s) for s in recipe]
    return steps


def _print_plan(run: PolyaRun) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "arm", "stage", title=f"PolyaRun {run.metadata.name}")
    for i, step in enumerate(plan(run.spec), start=1):
        table.add_row(str(i), step.arm, step.stage)
    Console(stderr=True).print(table)


def _inputs_for(step: PlannedStage, done: dict[str, "object"]) -> dict:
    """Artifacts a step reads: the previous stage of its arm (vanilla GRPO starts from the base model)."""
    arm_done = {k.split("/", 1)[1]: v for k, v in done.items() if k.startswith(step.arm + "/")}
    if step.stage == "filter":
        return {"selfgen": arm_done["selfgen"]}
    if step.stage == "midtrain":
        return {"filter": arm_done["filter"]}
    if step.stage == "grpo":
        return {"model": arm_done["midtrain"]} if "midtrain" in arm_done else {}
    if step.stage == "evaluate":
        for prev in ("grpo", "midtrain"):
            if prev in arm_done:
                return {"model": arm_done[prev]}
    return {}


def execute(run: PolyaRun, only: str | None = None, progress: bool | None = None) -> int:
    """Run the plan in order; a completed stage (its manifest exists) is skipped."""
    import importlib
    import time

    from polya.artifacts import ArtifactStore, write_result
    from polya.stages import StageNotImplemented, get_stage
    from polya.stages.common import StageContext
    from polya.serve.launch import ensure_ray

    store = ArtifactStore(run.spec.storage.uri)
    done: dict = {}
    ensure_ray()
    for step in plan(run.spec):
        try:
            get_stage(step.stage)
        except StageNotImplemented as exc:
            print(f"polya run: {exc}; stopping before {step.key}")
            return 2
        module = importlib.import_module(f"polya.stages.{step.stage}")
        ctx = StageContext(run=run, store=store, arm=step.arm, inputs=_inputs_for(step, done))
        if progress is not None:
            ctx.progress = progress
        t0 = time.perf_counter()
        if only and step.stage != only:
            art = store.artifact(step.stage, module.key(ctx))
            if not art.exists():
                print(f"polya run: --only {only}: {step.key} has not run yet; run the stages before it first")
                return 1
            done[step.key] = art
            continue
        result = module.run(ctx)
        done[step.key] = store.artifact(step.stage, module.key(ctx))
        write_result(run.spec.storage.uri, step.key, result.artifact_uri, result.figures)
        state = "cached" if result.skipped else f"{time.perf_counter() - t0:.1f}s"
        figures = ", ".join(f"{k}={v:.4g}" for k, v in list(result.figures.items())[:6])
        print(f"{step.key}: {state} -> {result.artifact_uri} ({figures})", flush=True)
    return 0


def run_file(path: str, only: str | None = None, metrics_port: int | None = None, dry_run: bool = False) -> int:
    from polya.validation import load_run_file

    try:
        run = load_run_file(path)
    except ValueError as exc:
        print(exc)
        return 1
    _print_plan(run)
    if dry_run:
        return 0
    if metrics_port:
        from polya.metrics import serve_metrics

        serve_metrics(metrics_port)
    return execute(run, only=only)


def run_stage_from_file(name: str, spec_path: str, arm: str = "polya") -> int:
    """`polya stage NAME`: what a cluster RayJob runs. Inputs are found by content address."""
    from polya.validation import load_run_file

    run = load_run_file(spec_path)
    return execute(run, only=name)
