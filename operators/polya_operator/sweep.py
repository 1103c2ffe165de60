"""The PolyaSweep controller's decision, as a pure function: ``reconcile_sweep(sweep, children) -> SweepDecision``.

A sweep owns one PolyaRun per (arm, seed) (`polya.sweep.children`): named ``<sweep>-<arm>-s<seed>``, labelled
with the sweep, the arm and the seed, created with the sweep as controller owner (deleting the sweep deletes
them: Kubernetes garbage collection). Each child is then an ordinary PolyaRun that the run controller
(`reconcile.py`) drives stage by stage; the sweep only creates children and sums up their phases.

* An invalid sweep (what the CRD's schema cannot check: an override the PolyaRun spec refuses, a child name
  over 40 characters, repeated arms or seeds) fails with one line per field error and creates nothing.
* A missing child is created unless ``spec.suspend`` is true (children already created run on: suspending a
  run is the run's own ``spec.suspend``). A child deleted by hand is created again from the sweep.
* A PolyaRun with a child's name that the sweep does not own (a namesake, or a deleted sweep's child the
  garbage collector has not reached yet) is not adopted: it counts as not created and the message says so.
* Drift: a child whose spec differs from the one the sweep wants now (the sweep's template or arms were
  edited after the child was created, or the child was) is left as it is, since finished work is never
  deleted; the message names it and the changed fields. Deleting the child recreates it from the current
  sweep. Children no longer in the sweep (an arm or seed removed) are left alone too, and named.
* Status: `polya.sweep.aggregate` of the owned children's ``status.phase`` (a child without a status yet, or
  created in this pass, is Pending), ``observedGeneration``, and the notes above in ``message``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from polya.spec import PolyaRun, PolyaRunSpec
from polya.sweep import PolyaSweep, PolyaSweepStatus, aggregate, child_manifest, children, load_sweep
from polya.validation import format_errors

from polya_operator.reconcile import Event, changed_fields

#: the parts of a sweep object that `load_sweep` validates (the API server's status is the operator's own)
_VALIDATED = ("apiVersion", "kind", "metadata", "spec")
#: at most this many names in a note of the status message (the rest are counted)
_SHOWN = 4


@dataclass
class SweepDecision:
    create: list[dict[str, Any]] = field(default_factory=list)  # child PolyaRun manifests, owned by the sweep
    status: dict[str, Any] = field(default_factory=dict)  # PolyaSweepStatus.model_dump(exclude_none=True)
    events: list[Event] = field(default_factory=list)
    #: wanted children that cannot be created: a PolyaRun the sweep does not own has the name (retry later)
    blocked: list[str] = field(default_factory=list)


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    return uid is not None and any(ref.get("uid") == uid and ref.get("controller")
                                   for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def drift(child: dict[str, Any], wanted: PolyaRun) -> list[str]:
    """Dotted fields where an existing child's spec differs from the wanted one (both normalised, so the
    defaults the API server or pydantic fill in do not count)."""
    try:
        have = PolyaRunSpec.model_validate(child.get("spec") or {}).model_dump(mode="json")
    except ValidationError:
        return ["spec"]
    return changed_fields(have, wanted.spec.model_dump(mode="json"))


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOWN])
    return shown + (f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def reconcile_sweep(sweep: dict[str, Any], existing: dict[str, dict[str, Any]]) -> SweepDecision:
    """``existing``: the PolyaRuns that may be the sweep's children, by name (the operator passes those
    labelled with the sweep, plus any namesake a create ran into); ownership is checked here."""
    old = sweep.get("status") or {}
    generation = (sweep.get("metadata") or {}).get("generation")
    try:
        model = load_sweep({k: sweep[k] for k in _VALIDATED if k in sweep})
    except ValidationError as exc:
        errors = "; ".join(str(e) for e in format_errors(exc))
        status = PolyaSweepStatus(phase="Failed", message=f"invalid sweep: {errors}", observedGeneration=generation)
        decision = SweepDecision(status=status.model_dump(exclude_none=True))
        if old.get("message") != status.message:
            decision.events.append(Event("Warning", "InvalidSpec", errors))
        return decision
    return _decide(sweep, model, existing, old, generation)


def _decide(sweep: dict[str, Any], model: PolyaSweep, existing: dict[str, dict[str, Any]], old: dict[str, Any],
            generation: int | None) -> SweepDecision:
    wanted = {c.metadata.name: c for c in children(model)}
    uid = sweep["metadata"].get("uid")
    owned = {n: b for n, b in existing.items() if owned_by(b, uid)}
    decision = SweepDecision(blocked=[n for n in wanted if n in existing and n not in owned])
    missing = [n for n in wanted if n not in existing]
    if not model.spec.suspend:
        decision.create = [child_manifest(wanted[n], sweep) for n in missing]
    phases = {n: (b.get("status") or {}).get("phase") or "Pending" for n, b in owned.items() if n in wanted}
    phases.update({c["metadata"]["name"]: "Pending" for c in decision.create})
    status = aggregate(model, phases)
    status.observedGeneration = generation
    drifted = {n: fields for n in wanted if n in owned for fields in [drift(owned[n], wanted[n])] if fields}
    drift_note = _drift_note(drifted)
    notes = _notes(decision, drift_note, sorted(set(owned) - set(wanted)),
                   missing if model.spec.suspend else [])
    status.message = "; ".join([status.message or "", *notes])
    decision.status = status.model_dump(exclude_none=True)
    _events(decision, old, status, drift_note)
    return decision


def _drift_note(drifted: dict[str, list[str]]) -> str | None:
    if not drifted:
        return None
    shown = _names([f"{n} ({', '.join(f[:3])})" for n, f in sorted(drifted.items())])
    return f"spec differs from the sweep's, left as is (delete a child to recreate it): {shown}"


def _notes(decision: SweepDecision, drift_note: str | None, extra: list[str], held: list[str]) -> list[str]:
    notes = []
    if held:
        notes.append(f"spec.suspend is true: {len(held)} child(ren) not created ({_names(held)})")
    if decision.blocked:
        notes.append(f"not adopted (a PolyaRun of that name the sweep does not own): {_names(decision.blocked)}")
    if drift_note:
        notes.append(drift_note)
    if extra:
        notes.append(f"no longer in the sweep, left as is: {_names(extra)}")
    return notes


def _events(decision: SweepDecision, old: dict[str, Any], status: PolyaSweepStatus, drift_note: str | None) -> None:
    if decision.create:
        names = [c["metadata"]["name"] for c in decision.create]
        decision.events.append(Event("Normal", "ChildrenCreated", f"created PolyaRun {_names(names)}"))
    if status.phase != old.get("phase") and status.phase in ("Succeeded", "Failed"):
        etype = "Normal" if status.phase == "Succeeded" else "Warning"
        decision.events.append(Event(etype, f"Sweep{status.phase}", status.message or status.phase))
    if drift_note and drift_note not in (old.get("message") or ""):
        decision.events.append(Event("Warning", "ChildSpecDiffers", drift_note))


__all__ = ["SweepDecision", "reconcile_sweep", "owned_by", "drift"]
