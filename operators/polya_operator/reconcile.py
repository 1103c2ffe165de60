"""The controller's decision, as a pure function: ``reconcile(run, observed, now) -> Decision``.

Stages run one at a time in the embedded runner's order (`polya.pipeline.plan`). For the current stage:

* no RayJob yet (and not suspended, backoff elapsed) -> create ``<run>-<arm>-<stage>-<attempt>``;
* its RayJob SUCCEEDED -> the stage succeeds and the next one is created in the same pass;
* its RayJob FAILED -> retry with exponential backoff (10 s, 20 s, … capped at 5 min) while attempts
  <= 1 + ``spec.maxStageRetries``; then the stage and the run fail with the RayJob's reason.
  Failed attempts' RayJobs are kept for post-mortems (their names carry the attempt number).

``spec.suspend`` starts no new stage (a running one finishes). When every stage has succeeded and
``evaluation.serve`` is true, a RayService keeps the rollout and reward-model apps up. An invalid spec
(one the API server let through, e.g. on a server without CEL) fails the run with the field errors.
Deleting the run deletes its children through owner references (Kubernetes garbage collection).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from polya.pipeline import PlannedStage, plan
from polya.spec import PolyaRunSpec
from polya.validation import format_errors

from polya_operator.children import (Defaults, child_name, configmap_name, rayjob, rayservice, rayservice_name,
                                     spec_configmap)

BACKOFF_BASE_S = float(os.environ.get("POLYA_OPERATOR_BACKOFF_S", "10"))
BACKOFF_MAX_S = 300.0
SUCCEEDED = {"SUCCEEDED"}
FAILED = {"FAILED", "STOPPED"}


@dataclass
class Observed:
    rayjobs: dict[str, dict[str, Any]] = field(default_factory=dict)  # owned RayJobs by name
    configmap: bool = False
    rayservice: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # "arm/stage" -> {artifactUri, figures}


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None


def _ts(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(ts: str | None) -> datetime | None:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if ts else None


def backoff(attempts: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def _condition(status: dict, ctype: str, value: bool, reason: str, message: str, now: datetime) -> None:
    conds = status.setdefault("conditions", [])
    new = {"type": ctype, "status": "True" if value else "False", "reason": reason, "message": message}
    for c in conds:
        if c["type"] == ctype:
            if c["status"] != new["status"]:
                c["lastTransitionTime"] = _ts(now)
            c.update(new)
            return
    new["lastTransitionTime"] = _ts(now)
    conds.append(new)


def _job_state(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    jstat = (st.get("jobStatus") or "").upper()
    if jstat in SUCCEEDED:
        return "succeeded"
    if jstat in FAILED or (st.get("jobDeploymentStatus") or "") == "Failed":
        return "failed"
    return "running"


def reconcile(run: dict[str, Any], observed: Observed, now: datetime, defaults: Defaults = Defaults()) -> Decision:
    d = Decision()
    status = copy.deepcopy(run.get("status") or {})
    status["observedGeneration"] = run["metadata"].get("generation")
    d.status = status
    name = run["metadata"]["name"]
    old_phase = status.get("phase")

    try:
        spec = PolyaRunSpec.model_validate(run.get("spec") or {})
    except Exception as exc:  # pydantic.ValidationError
        errors = "; ".join(f"spec.{e}" for e in format_errors(exc)) if hasattr(exc, "errors") else str(exc)
        status.update(phase="Failed", currentStage=None, message=f"invalid spec: {errors}")
        _condition(status, "Valid", False, "InvalidSpec", errors, now)
        if old_phase != "Failed":
            d.events.append(Event("Warning", "InvalidSpec", errors))
        return d
    _condition(status, "Valid", True, "SpecAccepted", "spec validated", now)

    if not observed.configmap:
        d.create.append(spec_configmap(run))

    steps: list[PlannedStage] = plan(spec)
    by_name = {s.get("name"): s for s in status.get("stages") or []}
    stages = [by_name.get(step.key) or {"name": step.key, "phase": "Pending", "attempts": 0} for step in steps]
    status["stages"] = stages

    if status.get("phase") == "Failed":
        return d  # terminal: a failed run stays failed (edit the spec under a new name to retry)

    for step, st in zip(steps, stages):
        if st["phase"] == "Succeeded":
            continue
        status["currentStage"] = step.key
        if st["phase"] == "Running":
            job = observed.rayjobs.get(st.get("rayJobName", ""))
            if job is None:
                # created but not observed yet (or removed by hand): recreate; the API answers 409 if it exists
                d.create.append(rayjob(run, spec, step.arm, step.stage, st["attempts"], defaults))
                break
            state = _job_state(job)
            if state == "running":
                break
            st["finishTime"] = _ts(now)
            if state == "succeeded":
                st["phase"] = "Succeeded"
                st["message"] = None
                result = observed.results.get(step.key) or {}
                if result.get("artifactUri"):
                    st["artifactUri"] = result["artifactUri"]
                if result.get("figures"):
                    st["figures"] = {k: float(v) for k, v in result["figures"].items()}
                d.events.append(Event("Normal", "StageSucceeded", f"{step.key} succeeded (attempt {st['attempts']})"))
                continue  # start the next stage in this same pass
            reason = (job.get("status") or {}).get("message") or (job.get("status") or {}).get("reason") or "RayJob failed"
            if st["attempts"] <= spec.maxStageRetries:
                st["phase"] = "Pending"
                st["message"] = f"attempt {st['attempts']} failed: {reason}; retrying in {backoff(st['attempts']):.0f}s"
                d.events.append(Event("Warning", "StageRetrying", f"{step.key}: {st['message']}"))
            else:
                st["phase"] = "Failed"
                st["message"] = reason
                status.update(phase="Failed", message=f"stage {step.key} failed after {st['attempts']} attempt(s): {reason}")
                _condition(status, "Failed", True, "StageFailed", status["message"], now)
                d.events.append(Event("Warning", "RunFailed", status["message"]))
                return d
        # Pending: start it unless suspended or still backing off
        if spec.suspend:
            status.update(phase="Suspended", message="spec.suspend is true: no new stage starts")
            _condition(status, "Suspended", True, "SuspendedBySpec", status["message"], now)
            if old_phase != "Suspended":
                d.events.append(Event("Normal", "Suspended", status["message"]))
            return d
        if st["attempts"] > 0 and st.get("finishTime"):
            ready_at = _parse(st["finishTime"]) + timedelta(seconds=backoff(st["attempts"]))
            if now < ready_at:
                d.requeue_after = (ready_at - now).total_seconds()
                status["phase"] = "Running"
                return d
        st["attempts"] += 1
        st["phase"] = "Running"
        st["rayJobName"] = child_name(name, step.arm, step.stage, st["attempts"])
        st["startTime"] = _ts(now)
        st.pop("finishTime", None)
        d.create.append(rayjob(run, spec, step.arm, step.stage, st["attempts"], defaults))
        d.events.append(Event("Normal", "StageStarted", f"{step.key} attempt {st['attempts']}: RayJob {st['rayJobName']}"))
        break
    else:
        status.update(phase="Succeeded", currentStage=None, message="all stages succeeded")
        _condition(status, "Complete", True, "AllStagesSucceeded", status["message"], now)
        if old_phase != "Succeeded":
            d.events.append(Event("Normal", "RunSucceeded", status["message"]))
        if spec.evaluation.serve and not observed.rayservice:
            d.create.append(rayservice(run, spec, defaults))
        return d

    if spec.suspend is False and status.get("phase") == "Suspended":
        _condition(status, "Suspended", False, "Resumed", "spec.suspend is false", now)
    status["phase"] = "Running"
    status["message"] = f"running {status['currentStage']}"
    if not spec.evaluation.serve and observed.rayservice:
        d.delete.append(("RayService", rayservice_name(name)))
    if old_phase != "Running":
        d.events.append(Event("Normal", "Running", status["message"]))
    return d


__all__ = ["Decision", "Event", "Observed", "reconcile", "backoff", "configmap_name"]
