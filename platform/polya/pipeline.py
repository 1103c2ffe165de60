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
    for s in recipe:
        steps.append(PlannedStage("polya", s))
        if s == "midtrain" and spec.grpo.enabled:
            steps.append(PlannedStage("polya-sft", "evaluate"))  # the mid-trained model, before RL
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
    if step.arm == "polya-sft":
        return {"model": done["polya/midtrain"]}
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


def execute(run: PolyaRun, only: str | None = None, progress: bool | None = None, report: bool = True,
            arm: str | None = None) -> int:
    """Run the plan in order; a completed stage (its manifest exists) is skipped. Writes the report."""
    import importlib
    import json
    import sys
    import time

    from polya.artifacts import ArtifactStore, write_result
    from polya.serve.launch import ensure_ray
    from polya.stages import StageNotImplemented, get_stage
    from polya.stages.common import StageContext

    live = sys.stderr.isatty() if progress is None else progress
    store = ArtifactStore(run.spec.storage.uri)
    done: dict = {}
    results: dict = {}
    steps = plan(run.spec)
    ensure_ray()
    view = _ProgressView(steps, live)
    with view:
        for step in steps:
            try:
                get_stage(step.stage)
            except StageNotImplemented as exc:
                print(f"polya run: {exc}; stopping before {step.key}")
                return 2
            module = importlib.import_module(f"polya.stages.{step.stage}")
            target = not only or (step.stage == only and (arm is None or step.arm == arm))
            try:
                inputs = _inputs_for(step, done)
            except KeyError as missing:
                if target:
                    print(f"polya run: {step.key} needs {missing} to have completed first; run the stages before it")
                    return 1
                continue  # a step of another arm whose inputs are not there: not needed here
            ctx = StageContext(run=run, store=store, arm=step.arm, inputs=inputs, progress=live)
            if not target:
                art = store.artifact(step.stage, module.key(ctx))
                if art.exists():
                    done[step.key] = art  # an input of a later target
                continue
            view.start(step)
            t0 = time.perf_counter()
            result = module.run(ctx)
            seconds = None if result.skipped else time.perf_counter() - t0
            art = store.artifact(step.stage, module.key(ctx))
            done[step.key] = art
            results[step.key] = {"artifact": str(art.local), "figures": result.figures, "seconds": seconds}
            write_result(run.spec.storage.uri, step.key, result.artifact_uri, result.figures)
            view.finish(step, result, seconds)
    if report and not only:
        from polya.analysis.report import build_report

        path = build_report(run, results, store.root / "report")
        line = {"event": "report", "path": str(path)}
        print(json.dumps(line) if not live else f"report: {path} (and report.html beside it)", flush=True)
    return 0


class _ProgressView:
    """A live view (stage, ETA, key figures) on a terminal; one JSON line per event otherwise."""

    def __init__(self, steps: list[PlannedStage], live: bool):
        self.steps, self.live = steps, live
        self.progress = None

    def __enter__(self):
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                     TextColumn("{task.completed}/{task.total} stages"), TimeElapsedColumn(),
                                     TextColumn("ETA"), TimeRemainingColumn())
            self.progress.__enter__()
            self.task = self.progress.add_task("starting", total=len(self.steps))
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def start(self, step: PlannedStage) -> None:
        if self.progress is not None:
            self.progress.update(self.task, description=step.key)
        else:
            import json

            print(json.dumps({"event": "stage_start", "step": step.key}), flush=True)

    def finish(self, step: PlannedStage, result, seconds: float | None) -> None:
        import json

        figures = {k: v for k, v in list(result.figures.items())[:8]}
        if self.progress is not None:
            state = "cached" if seconds is None else f"{seconds:.1f}s"
            shown = ", ".join(f"{k}={v:.4g}" for k, v in figures.items() if isinstance(v, (int, float)))
            self.progress.console.print(f"[green]✓[/] {step.key} ({state}) {shown}")
            self.progress.advance(self.task)
        else:
            print(json.dumps({"event": "stage_done", "step": step.key, "cached": seconds is None,
                              "seconds": seconds, "artifact": result.artifact_uri, "figures": figures},
                             default=float), flush=True)


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
    """`polya stage NAME --arm ARM`: what a cluster RayJob runs — exactly that one step; the steps before
    it must have completed (their artifacts are found by content address in the run's storage)."""
    from polya.validation import load_run_file

    run = load_run_file(spec_path)
    return execute(run, only=name, arm=arm)
