"""The controller's decision, as a pure function: ``reconcile(run, observed, now) -> Decision``.

Stages run one at a time in the embedded runner's order (`polya.recipe.plan`). For the current stage:

* no RayJob yet (and not suspended, backoff elapsed) -> create ``<run>-<arm>-<stage>-<attempt>``;
* its RayJob SUCCEEDED -> the stage succeeds and the next one is created in the same pass;
* its RayJob FAILED -> retry with exponential backoff (10 s, 20 s, … capped at 5 min) while attempts
  <= 1 + ``spec.maxStageRetries``; then the stage and the run fail with the RayJob's reason.
  Failed attempts' RayJobs are kept for post-mortems (their names carry the attempt number).

``spec.suspend`` starts no new stage (a running one finishes). When every stage has succeeded and
``evaluation.serve`` is true, a RayService keeps the rollout and reward-model apps up, serving the run's
final model; setting ``evaluation.serve`` to false deletes it. An invalid spec (one the API server let
through, e.g. on a server without CEL) fails the run with the field errors. Deleting the run deletes its
children through owner references (Kubernetes garbage collection).

Spec edits: stages read the ``<run>-spec`` ConfigMap written when the run started, and it is never
rewritten. An edit of a field that steers only the operator (`MUTABLE_FIELDS`) applies at once; an edit
of anything else (what a stage computes from) is refused: the run carries on from the spec it started
with and the ``SpecApplied`` condition (False, ``EditRefused``) names the changed fields and the way out
(a new PolyaRun under another name, which reuses every stage whose inputs are unchanged from storage).

RayJobs handed to Kueue (``cluster.queueName``) are created suspended; while KubeRay reports one
``Suspended`` the stage says it is queued.

The status is decided as the typed models of `polya.spec` (`PolyaRunStatus`, `StageStatus`) and handed
back as ``model_dump(exclude_none=True)``: the same dump every pass, so an unchanged status compares equal
to what the API server returned after the last patch.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Literal

from polya.recipe import ARMS, MAIN_ARM, PlannedStage, cache_key, inputs_for, plan
from polya.spec import Condition, PolyaRunSpec, PolyaRunStatus, RunPhase, StageStatus
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
    applied_spec: dict[str, Any] | None = None  # the spec the <run>-spec ConfigMap holds (what stages run)
    rayservice: bool = False
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # "arm/stage" -> {artifactUri, figures}
    #: (stage, cache key) -> {"artifactUri", "figures"} when that artifact is complete in the run's storage
    #: (its manifest exists: any run with the same storage made it), else None
    cached: Callable[[str, str], dict[str, Any] | None] = lambda stage, key: None
    #: (stage, cache key) -> the name of another run holding a live lease on that artifact (computing it now:
    #: `polya.lease`), else None
    leased: Callable[[str, str], str | None] = lambda stage, key: None


@dataclass
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass
class Decision:
    create: list[dict[str, Any]] = field(default_factory=list)
    delete: list[tuple[str, str]] = field(default_factory=list)  # (kind, name)
    status: dict[str, Any] = field(default_factory=dict)  # PolyaRunStatus.model_dump(exclude_none=True)
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    finished: list[StageStatus] = field(default_factory=list)  # stages that reached Succeeded in this pass


@dataclass
class _Pass:
    """One reconcile pass: its inputs, the status being decided (typed) and the decision it fills in."""

    run: dict[str, Any]
    observed: Observed
    now: datetime
    defaults: Defaults
    status: PolyaRunStatus
    old_phase: RunPhase  # the run's phase before this pass
    decision: Decision = field(default_factory=Decision)
    spec: PolyaRunSpec | None = None

    @property
    def name(self) -> str:
        return self.run["metadata"]["name"]

    def event(self, etype: str, reason: str, message: str) -> None:
        self.decision.events.append(Event(etype, reason, message))

    def condition(self, ctype: str, value: bool, reason: str, message: str) -> None:
        _condition(self.status, ctype, value, reason, message, self.now)

    def rayjob(self, step: PlannedStage, attempt: int) -> None:
        self.decision.create.append(rayjob(self.run, self.spec, step.arm, step.stage, attempt, self.defaults))


#: how walking the stages ends: a stage runs (or was started), every stage succeeded, or the pass stops
#: here (the run failed or is suspended, or a retry is backing off)
_Walk = Literal["running", "done", "stop"]


def _ts(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(ts: str | None) -> datetime | None:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc) if ts else None


def backoff(attempts: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


def _condition(status: PolyaRunStatus, ctype: str, value: bool, reason: str, message: str, now: datetime) -> None:
    flag: Literal["True", "False"] = "True" if value else "False"
    for c in status.conditions:
        if c.type == ctype:
            if c.status != flag:
                c.lastTransitionTime = _ts(now)
            c.status, c.reason, c.message = flag, reason, message
            return
    status.conditions.append(Condition(type=ctype, status=flag, reason=reason, message=message,
                                       lastTransitionTime=_ts(now)))


#: KubeRay's deployment status for a RayJob it refuses before running anything (e.g. a name over 47
#: characters): ``jobStatus`` stays empty, so only this says the job is over; a retry would be refused too
VALIDATION_FAILED = "ValidationFailed"


def _job_state(job: dict[str, Any]) -> str:
    """succeeded | failed | invalid (KubeRay refused the RayJob: never retried) | running."""
    st = job.get("status") or {}
    jstat = (st.get("jobStatus") or "").upper()
    if jstat in SUCCEEDED:
        return "succeeded"
    if (st.get("jobDeploymentStatus") or "") == VALIDATION_FAILED:
        return "invalid"
    if jstat in FAILED or (st.get("jobDeploymentStatus") or "") == "Failed":
        return "failed"
    return "running"


def reconcile(run: dict[str, Any], observed: Observed, now: datetime, defaults: Defaults = Defaults()) -> Decision:
    status = PolyaRunStatus.model_validate(run.get("status") or {})
    status.observedGeneration = run["metadata"].get("generation")
    p = _Pass(run, observed, now, defaults, status, old_phase=status.phase)
    if _validate(p):
        _decide(p)
    p.decision.status = status.model_dump(exclude_none=True)
    return p.decision


#: spec fields an edit may change while a run exists: they steer the operator (whether and where the
#: next RayJob starts, whether endpoints stay up), never what a stage computes
MUTABLE_FIELDS: tuple[tuple[str, ...], ...] = (("suspend",), ("maxStageRetries",), ("evaluation", "serve"),
                                               ("cluster",))


def _without_mutable(spec: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(spec)
    for path in MUTABLE_FIELDS:
        node = out
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def _with_mutable(applied: dict[str, Any], edited: dict[str, Any]) -> dict[str, Any]:
    """The applied spec with the edited spec's mutable fields."""
    out = copy.deepcopy(applied)
    for path in MUTABLE_FIELDS:
        src, dst = edited, out
        for part in path[:-1]:
            src = (src or {}).get(part) if isinstance(src, dict) else None
            dst = dst.setdefault(part, {})
        if isinstance(src, dict) and path[-1] in src:
            dst[path[-1]] = copy.deepcopy(src[path[-1]])
        else:
            dst.pop(path[-1], None)
    return out


def changed_fields(old: Any, new: Any, prefix: str = "spec") -> list[str]:
    """Dotted paths where two (normalised) specs differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += changed_fields(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [prefix]


def _validate(p: _Pass) -> bool:
    """Parse the spec into ``p.spec``; an invalid one fails the run with the field errors (returns False).
    A refused edit leaves ``p.spec`` at the applied spec (with the edit's mutable fields)."""
    try:
        p.spec = PolyaRunSpec.model_validate(p.run.get("spec") or {})
    except Exception as exc:  # pydantic.ValidationError
        errors = "; ".join(f"spec.{e}" for e in format_errors(exc)) if hasattr(exc, "errors") else str(exc)
        p.status.phase, p.status.currentStage, p.status.message = "Failed", None, f"invalid spec: {errors}"
        p.condition("Valid", False, "InvalidSpec", errors)
        if p.old_phase != "Failed":
            p.event("Warning", "InvalidSpec", errors)
        return False
    p.condition("Valid", True, "SpecAccepted", "spec validated")
    if p.observed.applied_spec is not None:
        _check_edit(p, p.observed.applied_spec)
    return True


def _check_edit(p: _Pass, applied: dict[str, Any]) -> None:
    try:
        applied_model = PolyaRunSpec.model_validate(applied)
    except Exception:  # noqa: BLE001 - a ConfigMap edited by hand: the stages would fail on it too
        return
    old = _without_mutable(applied_model.model_dump(mode="json"))
    new = _without_mutable(p.spec.model_dump(mode="json"))
    changed = changed_fields(old, new)
    previous = next((c for c in p.status.conditions if c.type == "SpecApplied"), None)
    if not changed:
        if previous is not None and previous.status == "False":
            p.condition("SpecApplied", True, "SpecMatches", "the spec matches the one the run started with")
        return
    p.spec = PolyaRunSpec.model_validate(_with_mutable(applied_model.model_dump(mode="json"),
                                                       p.spec.model_dump(mode="json")))
    shown = ", ".join(changed[:8]) + (f" and {len(changed) - 8} more" if len(changed) > 8 else "")
    message = (f"edit not applied: {shown} changed after the run started; stages run from the spec the run "
               f"started with (only {', '.join('spec.' + '.'.join(f) for f in MUTABLE_FIELDS)} may change). "
               "To run the new spec, apply it under a new name: stages whose inputs are unchanged are reused "
               "from storage")
    if previous is None or previous.message != message:
        p.event("Warning", "EditRefused", message)
    p.condition("SpecApplied", False, "EditRefused", message)


def _decide(p: _Pass) -> None:
    if not p.observed.configmap:
        p.decision.create.append(spec_configmap(p.run))
    steps = plan(p.spec)
    by_name = {s.name: s for s in p.status.stages}
    p.status.stages = [by_name.get(step.key) or StageStatus(name=step.key) for step in steps]
    if p.status.phase == "Failed":
        return  # terminal: a failed run stays failed (edit the spec under a new name to retry)
    outcome = _walk(p, steps)
    if outcome == "done":
        _all_done(p)
    elif outcome == "running":
        _running(p)


def _walk(p: _Pass, steps: list[PlannedStage]) -> _Walk:
    """Advance the stages in plan order, up to the first one that is not done after this pass."""
    for step, st in zip(steps, p.status.stages):
        if st.phase == "Succeeded":
            continue
        p.status.currentStage = step.key
        if st.phase == "Running":
            outcome = _advance_running(p, step, st)
            if outcome == "next":
                continue  # start the next stage in this same pass
            if outcome != "retry":
                return outcome
        if _reuse(p, step, st, steps):
            continue
        if not p.spec.suspend and _wait_for_holder(p, step, st, steps):
            return "running"
        return "running" if _start_pending(p, step, st) else "stop"
    return "done"


def artifact_key(spec: PolyaRunSpec, step: PlannedStage, stages: list[StageStatus],
                 steps: list[PlannedStage]) -> str | None:
    """The cache key `step` will have (what `polya stage` computes), from the artifacts of the steps it reads
    (their URIs in status end in ``<stage>/<key>``); None while an input's artifact is unknown."""
    done = {}
    for s, st in zip(steps, stages):
        if st.phase == "Succeeded" and st.artifactUri:
            parts = st.artifactUri.rstrip("/").split("/")
            done[s.key] = f"{parts[-2]}:{parts[-1]}"
    try:
        ids = inputs_for(step, done, steps)
    except KeyError:
        return None
    return cache_key(step.definition, spec, ARMS[step.arm], ids)


def _reuse(p: _Pass, step: PlannedStage, st: StageStatus, steps: list[PlannedStage]) -> bool:
    """A step whose artifact is complete in storage (this run's earlier attempt, or another run with the
    same storage and inputs) succeeds without a RayJob: starting Ray pods to find the manifest is waste."""
    key = artifact_key(p.spec, step, p.status.stages, steps)
    found = p.observed.cached(str(step.stage), key) if key else None
    if not found:
        return False
    st.phase, st.artifactUri, st.message = "Succeeded", found["artifactUri"], "reused from storage (no RayJob)"
    st.finishTime = _ts(p.now)
    if found.get("figures"):
        st.figures = {k: float(v) for k, v in found["figures"].items() if isinstance(v, (int, float))}
    p.event("Normal", "StageReused", f"{step.key}: its artifact {found['artifactUri']} is complete in storage")
    return True


def _advance_running(p: _Pass, step: PlannedStage, st: StageStatus) -> _Walk | Literal["next", "retry"]:
    """A running stage's RayJob: still running, succeeded ("next"), failed with retries left ("retry": the
    stage is Pending again) or failed for good (the run fails: "stop")."""
    job = p.observed.rayjobs.get(st.rayJobName or "")
    if job is None:
        # created but not observed yet (or removed by hand): recreate; the API answers 409 if it exists
        p.rayjob(step, st.attempts)
        return "running"
    state = _job_state(job)
    if state == "running":
        _queued_message(p, job, st)
        return "running"
    st.finishTime = _ts(p.now)
    if state == "succeeded":
        _succeed(p, step, st)
        return "next"
    jst = job.get("status") or {}
    reason = ": ".join(x for x in (jst.get("reason"), jst.get("message")) if x) or "RayJob failed"
    if state == "invalid":
        reason = f"KubeRay refused the RayJob ({VALIDATION_FAILED}): {jst.get('message') or 'no message'}"
    elif st.attempts <= p.spec.maxStageRetries:
        st.phase = "Pending"
        st.message = f"attempt {st.attempts} failed: {reason}; retrying in {backoff(st.attempts):.0f}s"
        p.event("Warning", "StageRetrying", f"{step.key}: {st.message}")
        return "retry"
    st.phase, st.message = "Failed", reason
    p.status.phase = "Failed"
    p.status.message = f"stage {step.key} failed after {st.attempts} attempt(s): {reason}"
    p.condition("Failed", True, "StageFailed", p.status.message)
    p.event("Warning", "RunFailed", p.status.message)
    return "stop"


QUEUED = "queued: the RayJob waits for Kueue to admit it"


def _queued_message(p: _Pass, job: dict[str, Any], st: StageStatus) -> None:
    """A RayJob created suspended for Kueue says so in the stage's message until it is admitted."""
    suspended = (job.get("status") or {}).get("jobDeploymentStatus") in ("Suspended", "Suspending") or (
        (job.get("spec") or {}).get("suspend") and not (job.get("status") or {}).get("jobStatus"))
    if suspended:
        st.message = f"{QUEUED} (queue {p.spec.cluster.queueName})" if p.spec.cluster.queueName else QUEUED
    elif st.message and st.message.startswith(QUEUED):
        st.message = None


def _succeed(p: _Pass, step: PlannedStage, st: StageStatus) -> None:
    st.phase, st.message = "Succeeded", None
    result = p.observed.results.get(step.key) or {}
    if result.get("artifactUri"):
        st.artifactUri = result["artifactUri"]
    if result.get("figures"):
        st.figures = {k: float(v) for k, v in result["figures"].items()}
    p.decision.finished.append(st)
    p.event("Normal", "StageSucceeded", f"{step.key} succeeded (attempt {st.attempts})")


#: how often a step waiting for another run's artifact looks again (the holder's lease or its manifest)
LEASE_RECHECK_S = float(os.environ.get("POLYA_OPERATOR_LEASE_RECHECK_S", "30"))


def _wait_for_holder(p: _Pass, step: PlannedStage, st: StageStatus, steps: list[PlannedStage]) -> bool:
    """Another run (a sibling in a sweep) computes this step's artifact right now: start no RayJob — its pods
    would only wait on the lease — and look again in LEASE_RECHECK_S; `_reuse` takes the artifact once it is
    complete, and a holder that dies lets its lease go stale, after which this step starts its own RayJob."""
    key = artifact_key(p.spec, step, p.status.stages, steps)
    who = p.observed.leased(str(step.stage), key) if key else None
    if not who:
        return False
    message = f"waiting for PolyaRun {who}, which computes this step's artifact (reused when complete)"
    if st.message != message:
        p.event("Normal", "WaitingForArtifact", f"{step.key}: {message}")
    st.message = message
    p.decision.requeue_after = LEASE_RECHECK_S
    return True


def _start_pending(p: _Pass, step: PlannedStage, st: StageStatus) -> bool:
    """Start a pending stage's next attempt unless suspended or still backing off (then False)."""
    if p.spec.suspend:
        p.status.phase, p.status.message = "Suspended", "spec.suspend is true: no new stage starts"
        p.condition("Suspended", True, "SuspendedBySpec", p.status.message)
        if p.old_phase != "Suspended":
            p.event("Normal", "Suspended", p.status.message)
        return False
    if st.attempts > 0 and st.finishTime:
        ready_at = _parse(st.finishTime) + timedelta(seconds=backoff(st.attempts))
        if p.now < ready_at:
            p.decision.requeue_after = (ready_at - p.now).total_seconds()
            p.status.phase = "Running"
            return False
    st.attempts += 1
    st.phase = "Running"
    st.rayJobName = child_name(p.name, step.arm, step.stage, st.attempts)
    st.startTime, st.finishTime = _ts(p.now), None
    p.rayjob(step, st.attempts)
    p.event("Normal", "StageStarted", f"{step.key} attempt {st.attempts}: RayJob {st.rayJobName}")
    return True


def _all_done(p: _Pass) -> None:
    p.status.phase, p.status.currentStage, p.status.message = "Succeeded", None, "all stages succeeded"
    p.condition("Complete", True, "AllStagesSucceeded", p.status.message)
    if p.old_phase != "Succeeded":
        p.event("Normal", "RunSucceeded", p.status.message)
    if p.spec.evaluation.serve and not p.observed.rayservice:
        p.decision.create.append(rayservice(p.run, p.spec, p.defaults, final_model(p.spec, p.status)))
    elif not p.spec.evaluation.serve and p.observed.rayservice:
        p.decision.delete.append(("RayService", rayservice_name(p.name)))


def final_model(spec: PolyaRunSpec, status: PolyaRunStatus) -> str | None:
    """The run's final model in storage: the main arm's last model-producing stage's ``<artifact>/model``
    (None when that arm trains nothing: the base model is served)."""
    stages = {st.name: st for st in status.stages}
    trained = [s for s in plan(spec) if s.arm == MAIN_ARM and s.definition.produces_model]
    uri = (stages.get(trained[-1].key).artifactUri if trained and trained[-1].key in stages else None)
    return f"{uri.rstrip('/')}/model" if uri else None


def _running(p: _Pass) -> None:
    if p.spec.suspend is False and p.status.phase == "Suspended":
        p.condition("Suspended", False, "Resumed", "spec.suspend is false")
    p.status.phase = "Running"
    p.status.message = f"running {p.status.currentStage}"
    if not p.spec.evaluation.serve and p.observed.rayservice:
        p.decision.delete.append(("RayService", rayservice_name(p.name)))
    if p.old_phase != "Running":
        p.event("Normal", "Running", p.status.message)


__all__ = ["Decision", "Event", "Observed", "reconcile", "backoff", "configmap_name"]
