"""The stage table: the one place that says what the recipe's stages and arms are.

Everything that needs to know "which stages exist, in which order, reading what" reads this module:
the embedded planner (`polya.pipeline`), the CLI's choices, the operator (per-stage accelerator needs
and child names), the report (arm labels, which artifact holds the reward curve) and each stage's
cache key. Stage and arm names are written as string literals here and nowhere else in the package.

A **stage** (`StageDef`) is: a name; the input slots it reads (``selfgen``/``filter``: that stage's
artifact in the same arm; ``model``: the arm's latest model, else the base model); its typed section of
`PolyaRunSpec`; the other spec paths that enter its cache key; its accelerator needs; and the module whose
``run(ctx)`` does the work. Every field of the section and of the paths enters the key unless the model
marks it ``NOT_IN_KEY`` (`polya.spec`): a new setting changes the key by default.

An **arm** (`ArmDef`) is a list of stages run on one line of models: ``polya`` (the recipe), ``base``
(the untouched model evaluated), ``polya-sft`` (the mid-trained model evaluated before RL), and the
baselines a run asks for in ``spec.baselines`` — ``vanilla`` (GRPO from the base model) and ``star``
(heuristic-free STaR traces, then SFT and GRPO). Arms share artifacts by content address.

Adding a stage: write ``polya/stages/<name>.py`` with ``run(ctx) -> StageResult``, add its settings
model to `polya.spec`, add one `StageDef` to `STAGES` and its name to the arms that run it.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # the spec imports this module (for the baseline names): no import at run time
    from pydantic import BaseModel

    from polya.spec import PolyaRunSpec

#: bump when a stage's output format changes, so old artifacts are not reused
ARTIFACT_VERSION = "2"


class Stage(StrEnum):
    SELFGEN = "selfgen"
    FILTER = "filter"
    MIDTRAIN = "midtrain"
    GRPO = "grpo"
    EVALUATE = "evaluate"


class Arm(StrEnum):
    BASE = "base"
    POLYA = "polya"
    POLYA_SFT = "polya-sft"
    VANILLA = "vanilla"
    STAR = "star"


#: the input slot that holds a model artifact (a folder with ``model/``)
MODEL_SLOT = "model"
#: arms a run may ask for in ``spec.baselines`` (the CRD's enum comes from here)
BASELINES = (Arm.VANILLA, Arm.STAR)
#: the filter's selection mode that keeps one trace per question (STaR), as the ``star`` arm uses it
STAR_SELECTION = Arm.STAR.value


# ------------------------------------------------------------------------------------------ stages
def _replicas(path: str, gpus: str) -> Callable[["PolyaRunSpec"], tuple[int, float]]:
    def needs(spec: "PolyaRunSpec") -> tuple[int, float]:
        block = _get(spec, path)
        return getattr(block, "replicas", getattr(block, "workers", 1)), float(getattr(block, gpus))

    return needs


def _grpo_needs(spec: "PolyaRunSpec") -> tuple[int, float]:
    g = spec.grpo  # learners and rollout replicas run side by side; size every actor for the larger
    return g.workers + g.rollout.replicas, max(g.gpusPerWorker, g.rollout.gpusPerReplica)


@dataclass(frozen=True)
class StageDef:
    name: Stage
    section: str  # the attribute of PolyaRunSpec holding this stage's typed settings
    inputs: tuple[str, ...]  # input slots: an earlier stage's name (same arm) or MODEL_SLOT
    reads: tuple[str, ...]  # other spec paths (dotted) whose values enter the cache key
    accelerators: Callable[["PolyaRunSpec"], tuple[int, float]]  # (actors, GPUs per actor); (n, 0) on CPU
    module: str  # defines run(ctx: StageContext) -> StageResult
    produces_model: bool = False
    summary: str = ""
    reads_when: Callable[["PolyaRunSpec"], tuple[str, ...]] = lambda spec: ()  # paths read only in some configs

    def settings(self, spec: "PolyaRunSpec") -> "BaseModel":
        return getattr(spec, self.section)

    def enabled(self, spec: "PolyaRunSpec") -> bool:
        return bool(getattr(self.settings(spec), "enabled", True))

    def run(self, ctx: Any) -> Any:
        import importlib

        try:
            return importlib.import_module(self.module).run(ctx)
        finally:
            release = getattr(ctx, "release", None)
            if release is not None:
                release()  # the step's artifact lease (`polya.lease`), taken in ctx.begin()


_COMMON = ("model", "heuristics.fewShot", "seed")

STAGES: dict[Stage, StageDef] = {s.name: s for s in (
    StageDef(Stage.SELFGEN, "selfGeneration", (), ("heuristics.fewShot", "seed", "dataset", "heuristics"),
             _replicas("selfGeneration", "gpusPerReplica"), "polya.stages.selfgen",
             summary="every (question, heuristic) x samplesPerHeuristic through the rollout app",
             # the run's model writes the traces unless selfGeneration.model (in the section) does: students of
             # one teacher share its traces
             reads_when=lambda spec: ("model",) if spec.selfGeneration.model is None else ()),
    StageDef(Stage.FILTER, "filtering", (Stage.SELFGEN,), ("seed",),
             _replicas("filtering.rewardModel", "gpusPerReplica"), "polya.stages.filter",
             summary="verify answers, score adherence, keep the best correct trace per group",
             # a judge runs with the model block's dtype and context length
             reads_when=lambda spec: ("model",) if spec.filtering.rewardModel.kind == "judge" else ()),
    StageDef(Stage.MIDTRAIN, "midTraining", (Stage.FILTER,), _COMMON,
             _replicas("midTraining", "gpusPerWorker"), "polya.stages.midtrain", produces_model=True,
             summary="SFT of the base model on the kept traces (Ray Train + DeepSpeed)"),
    StageDef(Stage.GRPO, "grpo", (MODEL_SLOT,),
             _COMMON + ("filtering.verifyTimeoutSeconds",), _grpo_needs, "polya.stages.grpo",
             produces_model=True, summary="GRPO: Serve rollouts, DeepSpeed learners, weights synced every step",
             # its questions: grpo.dataset (in the section) where set, else the run's dataset
             reads_when=lambda spec: ("dataset",) if spec.grpo.dataset is None else ()),
    StageDef(Stage.EVALUATE, "evaluation", (MODEL_SLOT,),
             # no "heuristics": composition classifies against the whole catalogue, prompts carry none
             _COMMON + ("filtering.verifyTimeoutSeconds",),
             _replicas("evaluation", "gpusPerReplica"), "polya.stages.evaluate",
             summary="unbiased pass@k on the benchmarks, composition analysis",
             # the composition judge is filtering's reward model: it matters only when the judge classifies
             reads_when=lambda spec: ("filtering.rewardModel",) if spec.evaluation.composition.classifier == "judge"
             else ()),
)}


# -------------------------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class ArmDef:
    name: Arm
    stages: tuple[Stage, ...]
    label: str  # how the report names the arm's final model
    baseline: bool = False  # runs only when spec.baselines names it
    heuristic_free: bool = False  # STaR: plain prompts, one trace per question
    starts_from: tuple[Arm, Stage] | None = None  # runs right after that step, on its model
    needs: tuple[Stage, ...] = ()  # stages that must be enabled for the arm to make sense

    def enabled(self, spec: "PolyaRunSpec") -> bool:
        if self.baseline and self.name not in spec.baselines:
            return False
        return all(STAGES[s].enabled(spec) for s in self.needs)


_RECIPE = (Stage.SELFGEN, Stage.FILTER, Stage.MIDTRAIN, Stage.GRPO, Stage.EVALUATE)

ARMS: dict[Arm, ArmDef] = {a.name: a for a in (
    ArmDef(Arm.BASE, (Stage.EVALUATE,), "base model"),
    ArmDef(Arm.POLYA, _RECIPE, "Polya (SFT + GRPO)"),
    # the mid-trained model before RL; without GRPO, polya/evaluate already evaluates it
    ArmDef(Arm.POLYA_SFT, (Stage.EVALUATE,), "mid-trained (SFT)", starts_from=(Arm.POLYA, Stage.MIDTRAIN),
           needs=(Stage.MIDTRAIN, Stage.GRPO)),
    ArmDef(Arm.VANILLA, (Stage.GRPO, Stage.EVALUATE), "vanilla GRPO", baseline=True, needs=(Stage.GRPO,)),
    ArmDef(Arm.STAR, _RECIPE, "STaR + GRPO", baseline=True, heuristic_free=True),
)}

#: the arm whose GRPO reward curve and filter rates the report plots
MAIN_ARM = Arm.POLYA
#: composition before RL is read from the first of these arms that was evaluated
BEFORE_RL_ARMS = (Arm.POLYA_SFT, Arm.BASE)


# -------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlannedStage:
    arm: Arm
    stage: Stage

    @property
    def key(self) -> str:
        """``arm/stage``: how status, results and the report name a step."""
        return f"{self.arm}/{self.stage}"

    @property
    def definition(self) -> StageDef:
        return STAGES[self.stage]

    @classmethod
    def parse(cls, key: str) -> "PlannedStage":
        a, s = key.split("/", 1)
        return cls(Arm(a), Stage(s))


def plan(spec: "PolyaRunSpec") -> list[PlannedStage]:
    """Every step a run needs, in the order the embedded runner and the operator run them."""
    lines = {a.name: [PlannedStage(a.name, s) for s in a.stages if STAGES[s].enabled(spec)]
             for a in ARMS.values() if a.enabled(spec)}
    steps: list[PlannedStage] = []
    for name, line in lines.items():
        if ARMS[name].starts_from is None:
            steps += line
    for name, line in lines.items():  # arms that continue another arm's model run right after it
        anchor = ARMS[name].starts_from
        if anchor is not None:
            at = steps.index(PlannedStage(*anchor))
            steps[at + 1 : at + 1] = line
    return steps


def inputs_for(step: PlannedStage, done: dict[str, Any], steps: list[PlannedStage]) -> dict[str, Any]:
    """The artifacts ``step`` reads, from ``done`` (step key -> artifact); ``steps`` is the run's plan. The
    ``model`` slot takes the latest planned model-producing step before it in its arm (else the step the arm
    starts from, else nothing: the base model). Raises KeyError naming a needed step that has not completed."""
    definition, a = STAGES[step.stage], ARMS[step.arm]
    earlier = [PlannedStage(step.arm, s) for s in a.stages[: a.stages.index(step.stage)]]
    inputs: dict[str, Any] = {}
    for slot in definition.inputs:
        if slot == MODEL_SLOT:
            source = next((e for e in reversed(earlier) if e.definition.produces_model and e in steps), None)
            if source is None and a.starts_from is not None:
                source = PlannedStage(*a.starts_from)
            if source is not None:
                inputs[slot] = done[source.key]
        else:
            inputs[slot] = done[PlannedStage(step.arm, Stage(slot)).key]
    return inputs


def planned_keys(spec: "PolyaRunSpec") -> dict[str, str]:
    """Step key -> the cache key of every planned step's artifact. Every input is an earlier planned step, so
    all keys follow from the spec (as the embedded runner and the operator find them step by step)."""
    steps = plan(spec)
    ids: dict[str, str] = {}
    keys: dict[str, str] = {}
    for step in steps:
        try:
            inputs = inputs_for(step, ids, steps)
        except KeyError:
            continue
        keys[step.key] = cache_key(step.definition, spec, ARMS[step.arm], inputs)
        ids[step.key] = f"{step.stage}:{keys[step.key]}"
    return keys


def lineage_step(arm: Arm, stage: Stage, upto: Stage | None = None) -> PlannedStage | None:
    """The ``stage`` step in the line of models ``arm`` continues: the arm's own (up to ``upto``, inclusive),
    else that of the arm it starts from, up to the step it starts from; None when the line has no such stage
    (whether the step is planned is the spec's business: `planned_keys`)."""
    a = ARMS[arm]
    own = a.stages[: a.stages.index(upto) + 1] if upto in a.stages else a.stages
    if stage in own:
        return PlannedStage(arm, stage)
    if a.starts_from is None:
        return None
    anchor_arm, anchor_stage = a.starts_from
    return lineage_step(anchor_arm, stage, upto=anchor_stage)


def midtraining_data(arm: Arm) -> PlannedStage | None:
    """The filter step whose kept traces mid-trained the models of ``arm`` (None: no mid-training in its line)."""
    mid = lineage_step(arm, Stage.MIDTRAIN)
    return PlannedStage(mid.arm, Stage.FILTER) if mid and Stage.FILTER in STAGES[Stage.MIDTRAIN].inputs else None


# --------------------------------------------------------------------------------------- cache key
def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def key_payload(definition: StageDef, spec: "PolyaRunSpec", a: ArmDef, inputs: dict[str, str]) -> dict[str, Any]:
    """What a stage's cache key hashes: its section and read paths (fields marked NOT_IN_KEY left out), the
    arm (whose name its outputs and metrics carry) and its inputs' identities."""
    from polya.spec import result_fields

    def value(v: Any) -> Any:
        return result_fields(v) if hasattr(v, "model_fields") else v

    return {"stage": str(definition.name), "section": value(definition.settings(spec)),
            "reads": {p: value(_get(spec, p)) for p in definition.reads + definition.reads_when(spec)},
            "arm": str(a.name), "inputs": inputs, "v": ARTIFACT_VERSION}


def cache_key(definition: StageDef, spec: "PolyaRunSpec", a: ArmDef, inputs: dict[str, str]) -> str:
    payload = json.dumps(key_payload(definition, spec, a, inputs), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
