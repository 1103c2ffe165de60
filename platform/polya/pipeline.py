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


def run_file(path: str, only: str | None = None, metrics_port: int | None = None) -> int:
    from polya.stages import StageNotImplemented, get_stage
    from polya.validation import load_run_file

    try:
        run = load_run_file(path)
    except ValueError as exc:
        print(exc)
        return 1
    _print_plan(run)
    for step in plan(run.spec):
        if only and step.stage != only:
            continue
        try:
            get_stage(step.stage)
        except StageNotImplemented as exc:
            print(f"polya run: {exc}; stopping before {step.key}")
            return 2
        raise NotImplementedError("stage execution lands with the embedded runner (pipeline issue)")
    return 0


def run_stage_from_file(name: str, spec_path: str, arm: str = "polya") -> int:
    from polya.stages import StageNotImplemented, get_stage
    from polya.validation import load_run_file

    run = load_run_file(spec_path)
    try:
        get_stage(name)
    except StageNotImplemented as exc:
        print(f"polya stage: {exc}")
        return 2
    raise NotImplementedError("stage execution lands with the embedded runner (pipeline issue)")
