"""`PolyaSweep`: one experiment of the paper as one object — a PolyaRun template, the arms that change it and
the seeds to repeat each arm with (pure logic: expansion, naming, status aggregation; no I/O).

A sweep expands (`children`) into one PolyaRun per (arm, seed): the template's spec, the arm's ``set``
overrides (dotted spec paths, as `polya validate` names fields: ``heuristics.count: 4``), ``spec.seed`` =
the seed. Children are named ``<sweep>-<arm>-s<seed>`` (deterministic: re-applying a sweep finds its children)
and each is a full PolyaRun, validated as one: a bad override is refused with the arm and path named.

Storage: child ``c`` writes its results and report under ``<storage.uri>/runs/<c>``, and its stage outputs in
the sweep's one content-addressed store (``storage.artifacts``, default the sweep's ``storage.uri``), so children
share every stage whose inputs are equal: the vanilla baseline of seed 0, say, runs once for every arm of
seed 0, and budget-matched arms that set the same ``grpo.dataset`` share nothing they should not.

Budget-matched arms are written as arms (``{heuristics.count: 16, dataset.limit: 463}`` beside
``{heuristics.count: 1, dataset.limit: 7408}``); baselines (vanilla, STaR) are the run's own ``baselines``,
evaluated inside each child. The sweep report (`polya.analysis.sweep_report`) compares every (arm, model)
across seeds with bootstrap intervals.

The operator creates the children (owned by the sweep) and aggregates their phases (`aggregate`); `polya
sweep FILE` runs them one after another on this machine.
"""
from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from polya.spec import API_GROUP, API_VERSION, MAX_RUN_NAME, ObjectMeta, PolyaRun, PolyaRunSpec
from polya.spec import StrictModel as _Model

SWEEP_KIND = "PolyaSweep"
SWEEP_PLURAL = "polyasweeps"
SWEEP_SHORT_NAMES = ["psweep"]
#: label on every child PolyaRun: the sweep it belongs to (and the arm, the seed)
LABEL_SWEEP = f"{API_GROUP}/sweep"
LABEL_SWEEP_ARM = f"{API_GROUP}/sweep-arm"
LABEL_SWEEP_SEED = f"{API_GROUP}/sweep-seed"
#: where a child's results and report go, under the sweep's storage.uri
RUNS_DIR = "runs"

ArmName = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=24)]


class SweepArm(_Model):
    name: ArmName = Field(description="Short name (DNS label) used in child names and the report.")
    set: dict[str, Any] = Field(
        default_factory=dict,
        description="Overrides of the template: dotted spec paths to values (heuristics.count: 4, dataset.limit: 116).",
    )
    description: str | None = Field(default=None, description="What the arm tests, for the report.")

    @field_validator("set")
    @classmethod
    def _paths(cls, overrides: dict[str, Any]) -> dict[str, Any]:
        for path in overrides:
            if not path or any(not part for part in path.split(".")):
                raise ValueError(f"override path {path!r} is not a dotted spec path (e.g. heuristics.count)")
            if path.split(".")[0] in ("seed", "storage"):
                raise ValueError(f"{path!r} is set by the sweep (seeds, storage): drop it from the arm")
        return overrides


class PolyaSweepSpec(_Model):
    template: PolyaRunSpec = Field(description="The PolyaRun spec every child starts from.")
    arms: list[SweepArm] = Field(min_length=1, description="One child per arm and seed.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="spec.seed of each repeat.")
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = Field(
        default=0.95, description="Level of the report's bootstrap intervals.")
    bootstrap: Annotated[int, Field(ge=100, le=100000)] = Field(
        default=2000, description="Bootstrap resamples (of problems and seeds) behind each interval.")
    suspend: bool = Field(default=False, description="Pause: no new child is created while true.")
    # the template as written: children start from it, so a default the template's validation filled in (e.g.
    # heuristics.count) does not collide with an arm's override (heuristics.names)
    _written: dict[str, Any] | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_written(cls, data: Any, handler: Any) -> "PolyaSweepSpec":
        model = handler(data)
        if isinstance(data, dict) and isinstance(data.get("template"), dict):
            model._written = copy.deepcopy(data["template"])
        return model

    @field_validator("arms")
    @classmethod
    def _unique_arms(cls, arms: list[SweepArm]) -> list[SweepArm]:
        names = [a.name for a in arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be unique, got {names}")
        return arms

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be >= 0 (they appear in child names), got {seeds}")
        return seeds


ChildPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class SweepChildStatus(_Model):
    name: str
    arm: str
    seed: int
    phase: ChildPhase | None = None  # None: not created yet


class PolyaSweepStatus(_Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = "Pending"
    children: list[SweepChildStatus] = Field(default_factory=list)
    succeeded: int = 0
    failed: int = 0
    total: int = 0
    observedGeneration: int | None = None
    message: str | None = None


class PolyaSweep(_Model):
    apiVersion: Literal["polya.dev/v1alpha1"] = f"{API_GROUP}/{API_VERSION}"
    kind: Literal["PolyaSweep"] = SWEEP_KIND
    metadata: ObjectMeta
    spec: PolyaSweepSpec
    status: PolyaSweepStatus | None = None

    @model_validator(mode="after")
    def _children_valid(self) -> "PolyaSweep":
        """Every child is a valid PolyaRun with a name the API server takes: a bad override is refused here
        (``spec.arms[i].set.<path>: ...``), not when the operator creates the child."""
        errors = []
        for i, arm in enumerate(self.spec.arms):
            name = child_name(self.metadata.name, arm.name, max(self.spec.seeds))
            if len(name) > MAX_RUN_NAME:
                errors.append({"type": "value_error", "loc": ("spec", "arms", i, "name"), "input": arm.name,
                               "ctx": {"error": ValueError(
                                   f"child PolyaRun {name!r} would be {len(name)} characters, over {MAX_RUN_NAME}: "
                                   "shorten the sweep's or the arm's name")}})
                continue
            try:
                child_spec(self.spec, arm, self.spec.seeds[0], self.metadata.name)
            except ValidationError as exc:
                for err in exc.errors(include_url=False):  # the child's own error types (a typo keeps its
                    # "did you mean"), at the arm's path
                    moved = {"type": err["type"], "loc": ("spec", "arms", i, "set", *err["loc"]), "input": err.get("input")}
                    if "ctx" in err:
                        moved["ctx"] = err["ctx"]
                    errors.append(moved)
            except ValueError as exc:
                errors.append({"type": "value_error", "loc": ("spec", "arms", i, "set"), "input": arm.set,
                               "ctx": {"error": exc}})
        if errors:
            raise ValidationError.from_exception_data(type(self).__name__, errors)
        return self


# ---------------------------------------------------------------------------------------------- expansion
def child_name(sweep: str, arm: str, seed: int) -> str:
    return f"{sweep}-{arm}-s{seed}"


def _set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    *parents, leaf = path.split(".")
    for i, part in enumerate(parents):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise ValueError(f"override {path!r}: {'.'.join(parents[: i + 1])} is not an object")
        node = nxt
    node[leaf] = copy.deepcopy(value)


def _join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def child_spec(spec: PolyaSweepSpec, arm: SweepArm, seed: int, sweep: str) -> PolyaRunSpec:
    """The spec of child (arm, seed): the template, the arm's overrides, the seed, and storage under the
    sweep's (results/report per child, one shared artifact store). Raises pydantic's ValidationError (paths
    relative to the child's spec) or ValueError (an override path through a non-object)."""
    doc = copy.deepcopy(spec._written) if spec._written is not None else spec.template.model_dump(
        mode="json", exclude_unset=True)
    for path, value in arm.set.items():
        _set_path(doc, path, value)
    doc["seed"] = seed
    base = spec.template.storage
    doc["storage"] = {"uri": _join(base.uri, RUNS_DIR, child_name(sweep, arm.name, seed)),
                      "artifacts": base.artifact_root()}
    return PolyaRunSpec.model_validate(doc)


def children(sweep: PolyaSweep) -> list[PolyaRun]:
    """Every child PolyaRun, arm-major then seed order (the status's order; the embedded runner runs them
    seed by seed: `polya.sweep_run`)."""
    out = []
    meta = sweep.metadata
    for arm in sweep.spec.arms:
        for seed in sweep.spec.seeds:
            labels = {LABEL_SWEEP: meta.name, LABEL_SWEEP_ARM: arm.name, LABEL_SWEEP_SEED: str(seed)}
            out.append(PolyaRun(metadata=ObjectMeta(name=child_name(meta.name, arm.name, seed), namespace=meta.namespace,
                                                    labels=labels),
                                spec=child_spec(sweep.spec, arm, seed, meta.name)))
    return out


def child_manifest(child: PolyaRun, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    """The child as the API server takes it (its whole spec, defaults filled in); ``owner`` = the
    sweep object (apiVersion, kind, metadata.name/uid) makes the sweep its controller owner."""
    body = {"apiVersion": child.apiVersion, "kind": child.kind,
            "metadata": {"name": child.metadata.name, "labels": dict(child.metadata.labels)},
            "spec": child.spec.model_dump(mode="json", exclude_none=True)}
    if child.metadata.namespace:
        body["metadata"]["namespace"] = child.metadata.namespace
    if owner is not None:
        body["metadata"]["ownerReferences"] = [{
            "apiVersion": owner.get("apiVersion", f"{API_GROUP}/{API_VERSION}"), "kind": SWEEP_KIND,
            "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
            "controller": True, "blockOwnerDeletion": True}]
    return body


# --------------------------------------------------------------------------------------------- aggregation
def aggregate(sweep: PolyaSweep, phases: dict[str, str | None]) -> PolyaSweepStatus:
    """The sweep's status from its children's phases (name -> phase; missing or None: not created yet).
    Failed once any child failed (the others still run to the end: their figures are still worth having);
    Succeeded when every child did; Suspended while the sweep is suspended and nothing runs; else Running
    once a child exists, Pending before."""
    rows = []
    for arm in sweep.spec.arms:
        for seed in sweep.spec.seeds:
            name = child_name(sweep.metadata.name, arm.name, seed)
            rows.append(SweepChildStatus(name=name, arm=arm.name, seed=seed, phase=phases.get(name)))
    got = [r.phase for r in rows]
    ok, failed = got.count("Succeeded"), got.count("Failed")
    if failed:
        phase = "Failed"
    elif ok == len(rows):
        phase = "Succeeded"
    elif sweep.spec.suspend and "Running" not in got:
        phase = "Suspended"
    elif any(p is not None for p in got):
        phase = "Running"
    else:
        phase = "Pending"
    failed_names = [r.name for r in rows if r.phase == "Failed"]
    message = (f"{ok}/{len(rows)} children succeeded" + (f"; failed: {', '.join(failed_names)}" if failed_names else ""))
    return PolyaSweepStatus(phase=phase, children=rows, succeeded=ok, failed=failed, total=len(rows), message=message)


def load_sweep(doc: dict[str, Any]) -> PolyaSweep:
    """Validate a parsed manifest (raises pydantic.ValidationError)."""
    return PolyaSweep.model_validate(doc)
