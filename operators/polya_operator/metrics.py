"""The operator's Prometheus metrics (names are part of the Grafana dashboard's contract)."""
from __future__ import annotations

import threading
from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from polya.spec import RunPhase
from polya.sweep import PolyaSweepStatus

RUNS = Gauge("polya_operator_runs", "PolyaRuns by phase", ["phase"])
STAGE_DURATION = Histogram("polya_operator_stage_duration_seconds", "Wall time of succeeded stages (RayJob start to end)",
                           ["stage"], buckets=(30, 60, 300, 600, 1800, 3600, 7200, 21600, 86400))
RECONCILE_SECONDS = Histogram("polya_operator_reconcile_seconds", "Latency of one reconcile (API reads and writes)",
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
RECONCILE_ERRORS = Counter("polya_operator_reconcile_errors_total", "Reconciles that raised", ["reason"])
CHILDREN_CREATED = Counter("polya_operator_children_created_total", "Objects created by the operator", ["kind"])
STAGE_PROGRESS = Gauge("polya_operator_stage_progress_ratio", "Succeeded stages / planned stages", ["namespace", "run"])
SWEEPS = Gauge("polya_operator_sweeps", "PolyaSweeps by phase", ["phase"])
SWEEP_PROGRESS = Gauge("polya_operator_sweep_progress_ratio", "Succeeded child PolyaRuns / children of a PolyaSweep",
                       ["namespace", "sweep"])

ALL_NAMES = sorted([
    "polya_operator_runs", "polya_operator_stage_duration_seconds", "polya_operator_reconcile_seconds",
    "polya_operator_reconcile_errors_total", "polya_operator_children_created_total",
    "polya_operator_stage_progress_ratio", "polya_operator_sweeps", "polya_operator_sweep_progress_ratio",
])

_phases: dict[tuple[str, str], str] = {}
#: record_phase / record_sweep run on the reconcile pool's threads and kopf's: one count-and-set at a time
_guard = threading.Lock()


def record_phase(namespace: str, name: str, phase: str | None) -> None:
    """Keep the runs-by-phase gauge equal to the latest phase of every run seen."""
    with _guard:
        if phase is None:
            _phases.pop((namespace, name), None)
        else:
            _phases[(namespace, name)] = phase
        _set_counts(RUNS, _phases, get_args(RunPhase))


def _set_counts(gauge: Gauge, latest: dict[tuple[str, str], str], phases: tuple[str, ...]) -> None:
    counts: dict[str, int] = {}
    for p in latest.values():
        counts[p] = counts.get(p, 0) + 1
    for p in phases:
        gauge.labels(p).set(counts.get(p, 0))


_sweep_phases: dict[tuple[str, str], str] = {}


def record_sweep(namespace: str, name: str, status: dict | None) -> None:
    """Keep the sweeps-by-phase gauge and the sweep's progress (succeeded / total children) current; ``None``:
    the sweep is gone (its series are dropped)."""
    with _guard:
        if status is None:
            _sweep_phases.pop((namespace, name), None)
            try:
                SWEEP_PROGRESS.remove(namespace, name)
            except KeyError:
                pass
        else:
            _sweep_phases[(namespace, name)] = status.get("phase") or "Pending"
            SWEEP_PROGRESS.labels(namespace, name).set(status.get("succeeded", 0) / max(1, status.get("total", 0)))
        _set_counts(SWEEPS, _sweep_phases, get_args(PolyaSweepStatus.model_fields["phase"].annotation))


def tracked_runs() -> int:
    """How many runs the operator currently tracks (any phase)."""
    return len(_phases)


def prime() -> None:
    """Series that exist from the start at zero, so a dashboard's ``rate()`` sees their first increase (a
    histogram born with its first observation has no rate): stage durations for every stage."""
    from polya.recipe import Stage

    for stage in Stage:
        STAGE_DURATION.labels(str(stage))
