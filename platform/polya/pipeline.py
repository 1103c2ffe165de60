"""The embedded runner: the run's plan (`polya.recipe.plan`) executed in order on this machine, with a
live view and the run's report at the end. The stage table (`polya.recipe`) says what each step reads.
"""
from __future__ import annotations

import json
import sys
import time

from polya.recipe import PlannedStage, Stage, inputs_for, plan
from polya.spec import PolyaRun


def _print_plan(run: PolyaRun) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("#", "arm", "stage", title=f"PolyaRun {run.metadata.name}")
    for i, step in enumerate(plan(run.spec), start=1):
        table.add_row(str(i), str(step.arm), str(step.stage))
    Console(stderr=True).print(table)


def _targets(steps: list[PlannedStage], only: str | None, arm: str | None) -> set[PlannedStage]:
    if not only:
        return set(steps)
    return {s for s in steps if s.stage == Stage(only) and (arm is None or s.arm == arm)}


def execute(run: PolyaRun, only: str | None = None, progress: bool | None = None, report: bool = True,
            arm: str | None = None) -> int:
    """Run the plan in order; a completed step (its manifest exists) is skipped. Writes the report."""
    from polya import metrics
    from polya.artifacts import ArtifactStore, write_result
    from polya.preflight import problems
    from polya.serve.launch import ensure_ray
    from polya.stages.common import StageContext

    found = problems(run, only)
    for line in found:
        print(f"polya: {line}", file=sys.stderr)
    if found:
        return 1
    live = sys.stderr.isatty() if progress is None else progress
    store = ArtifactStore(run.spec.storage.artifact_root())
    done: dict = {}
    results: dict = {}
    steps = plan(run.spec)
    targets = _targets(steps, only, arm)
    ensure_ray()
    with _ProgressView(steps, live) as view:
        for step in steps:
            try:
                inputs = inputs_for(step, done, steps)
            except KeyError as missing:
                if step in targets:
                    print(f"polya run: {step.key} needs {missing} to have completed first; run the stages before it")
                    return 1
                continue  # a step of another arm whose inputs are not there: not needed here
            ctx = StageContext(run=run, store=store, stage=step.stage, arm=step.arm, inputs=inputs, progress=live)
            if step not in targets:
                art = ctx.artifact()
                if art.exists():
                    done[step.key] = art  # an input of a later target
                continue
            view.start(step)
            metrics.prime(str(step.stage), str(step.arm))
            t0 = time.perf_counter()
            try:
                result = step.definition.run(ctx)
            except BaseException:
                metrics.STAGE_RUNS.labels(str(step.stage), str(step.arm), "failed").inc()
                raise
            seconds = None if result.skipped else time.perf_counter() - t0
            metrics.STAGE_RUNS.labels(str(step.stage), str(step.arm), "cached" if seconds is None else "succeeded").inc()
            if seconds is not None:
                metrics.STAGE_DURATION.labels(str(step.stage), str(step.arm)).observe(seconds)
            done[step.key] = art = ctx.artifact()
            results[step.key] = {"artifact": art.uri, "figures": result.figures, "seconds": seconds}
            write_result(run.spec.storage.uri, step.key, result.artifact_uri, result.figures)
            view.finish(step, result, seconds)
    if report and not only:
        _report(run, results, ArtifactStore(run.spec.storage.uri).child("report"), live)  # the run's own folder
    return 0


def _report(run: PolyaRun, results: dict, uri: str, live: bool) -> None:
    """The report, built in this node's folder for ``<storage>/report`` and pushed there."""
    from polya import storage
    from polya.analysis.report import build_report

    out_dir = storage.staging_dir(uri, "report")
    if storage.is_remote(uri):
        storage.remove(str(out_dir))  # an earlier run's staging
    path = build_report(run, results, out_dir)
    if storage.is_remote(uri):
        storage.push(out_dir, uri)
        path = storage.join(uri, path.name)
    line = {"event": "report", "path": str(path)}
    print(json.dumps(line) if not live else f"report: {path} (and report.html beside it)", flush=True)


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
            print(json.dumps({"event": "stage_start", "step": step.key}), flush=True)

    def finish(self, step: PlannedStage, result, seconds: float | None) -> None:
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


def run_stage_from_file(name: str, spec_path: str, arm: str) -> int:
    """`polya stage NAME --arm ARM`: what a cluster RayJob runs — exactly that one step; the steps before
    it must have completed (their artifacts are found by content address in the run's storage)."""
    from polya.validation import load_run_file

    from polya.metrics import serve_stage_metrics_from_env

    run = load_run_file(spec_path)
    linger = serve_stage_metrics_from_env()
    code = execute(run, only=name, arm=arm)
    if code == 0 and plan(run.spec)[-1] == PlannedStage.parse(f"{arm}/{name}"):
        cluster_report(run)  # the run's last step writes its report, as `polya run` does at the end
    if code == 0:
        time.sleep(linger)  # the last figures stay scrapeable for a scrape interval or two (not on failure:
        # a failed attempt reports at once, and the linger would count against activeDeadlineSeconds)
    return code


def cluster_report(run: PolyaRun) -> None:
    """The report of a run whose steps ran as separate processes: from the results they wrote to storage."""
    from polya.artifacts import ArtifactStore, read_results

    keys = {s.key for s in plan(run.spec)}
    results = {k: {"artifact": r["artifactUri"], "figures": r.get("figures") or {}, "seconds": None}
               for k, r in read_results(run.spec.storage.uri).items() if k in keys}
    _report(run, results, ArtifactStore(run.spec.storage.uri).child("report"), live=False)
