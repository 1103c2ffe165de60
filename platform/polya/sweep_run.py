"""`polya sweep FILE`: a PolyaSweep run on this machine — its children one after another (each as `polya run`
runs a PolyaRun: every stage whose artifact exists is skipped, so children share work and a rerun resumes),
then the sweep report (`polya.analysis.sweep_report`) in ``<storage.uri>/sweep-report``.

A child that fails is reported and the others still run (their figures are still worth having); the command
exits 1 if any failed. Interrupting it (Ctrl-C) stops at once; the next `polya sweep` resumes from the
completed stages.
"""
from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path


def _print_children(sweep, kids) -> None:
    from rich.console import Console
    from rich.table import Table

    overrides = {a.name: a.set for a in sweep.spec.arms}
    table = Table("#", "child PolyaRun", "arm", "seed", "overrides", title=f"PolyaSweep {sweep.metadata.name}")
    for i, child in enumerate(kids, start=1):
        arm = child.metadata.labels["polya.dev/sweep-arm"]
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in overrides[arm].items()) or "(template)"
        table.add_row(str(i), child.metadata.name, arm, str(child.spec.seed), shown)
    Console(stderr=True).print(table)


def write_sweep_report(sweep) -> str:
    """Build the sweep report where the sweep's storage says (pushed to object storage when remote)."""
    from polya import storage
    from polya.analysis.sweep_report import build_sweep_report
    from polya.artifacts import ArtifactStore

    uri = ArtifactStore(sweep.spec.template.storage.uri).child("sweep-report")
    out_dir = storage.staging_dir(uri, "sweep-report")
    if storage.is_remote(uri):
        storage.remove(str(out_dir))
    path: Path | str = build_sweep_report(sweep, Path(out_dir))
    if storage.is_remote(uri):
        storage.push(out_dir, uri)
        path = storage.join(uri, Path(path).name)
    return str(path)


def run_order(sweep) -> list:
    """The children in the order this machine runs them: seed-major (every arm of seed 0, then of seed 1,
    ...), so a sweep cut short holds whole seeds to compare."""
    from polya.sweep import children

    seed_order = {seed: i for i, seed in enumerate(sweep.spec.seeds)}
    return sorted(children(sweep), key=lambda c: seed_order[c.spec.seed])


def run_sweep(sweep, path: str, dry_run: bool = False, verbose: bool = False) -> int:
    from polya.cli import check_inputs
    from polya.pipeline import execute
    from polya.sweep import aggregate

    kids = run_order(sweep)
    _print_children(sweep, kids)
    if dry_run:
        return 0
    for child in kids:  # every child's local question files, before the first stage starts
        check_inputs(child, path)
    phases: dict[str, str] = {}
    for i, child in enumerate(kids, start=1):
        print(json.dumps({"event": "child_start", "child": child.metadata.name, "index": i, "of": len(kids)}),
              flush=True)
        try:
            code = execute(child)
        except Exception as exc:  # noqa: BLE001 - one child's crash is reported; the others still run
            if verbose:
                traceback.print_exc()
            print(f"polya sweep: child {child.metadata.name} failed: {type(exc).__name__}: "
                  f"{' '.join(str(exc).split())[:300]}", file=sys.stderr)
            code = 1
        phases[child.metadata.name] = "Succeeded" if code == 0 else "Failed"
        print(json.dumps({"event": "child_done", "child": child.metadata.name, "phase": phases[child.metadata.name]}),
              flush=True)
    status = aggregate(sweep, phases)
    report = write_sweep_report(sweep)
    print(json.dumps({"event": "sweep_done", "phase": status.phase, "succeeded": status.succeeded,
                      "total": status.total, "report": report}), flush=True)
    return 0 if status.phase == "Succeeded" else 1
