"""The stage table: the plan, the wiring of inputs, and cache keys derived from the typed sections."""
from __future__ import annotations

import copy
import importlib
from typing import Annotated

import pytest

from polya.recipe import ARMS, MODEL_SLOT, STAGES, Arm, PlannedStage, Stage, cache_key, inputs_for, plan
from polya.spec import NOT_IN_KEY, GRPOSpec, PolyaRun, PolyaRunSpec


def spec_of(doc: dict, **over) -> PolyaRunSpec:
    doc = copy.deepcopy(doc)
    for path, value in over.items():
        node = doc["spec"]
        *parents, leaf = path.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return PolyaRun.model_validate(doc).spec


def keys(steps):
    return [s.key for s in steps]


def test_plan_of_the_demo_and_with_baselines(local_doc):
    assert keys(plan(spec_of(local_doc))) == ["base/evaluate", "polya/selfgen", "polya/filter", "polya/midtrain",
                                              "polya-sft/evaluate", "polya/grpo", "polya/evaluate"]
    with_baselines = plan(spec_of(local_doc, baselines=["star", "vanilla"]))
    assert keys(with_baselines)[7:] == ["vanilla/grpo", "vanilla/evaluate", "star/selfgen", "star/filter",
                                        "star/midtrain", "star/grpo", "star/evaluate"]


def test_disabled_stages_drop_out_with_the_arms_that_need_them(local_doc):
    no_rl = plan(spec_of(local_doc, grpo__enabled=False, baselines=["vanilla"]))
    assert keys(no_rl) == ["base/evaluate", "polya/selfgen", "polya/filter", "polya/midtrain", "polya/evaluate"]
    no_sft = plan(spec_of(local_doc, midTraining__enabled=False))
    assert keys(no_sft) == ["base/evaluate", "polya/selfgen", "polya/filter", "polya/grpo", "polya/evaluate"]


def test_inputs_follow_each_arm(local_doc):
    steps = plan(spec_of(local_doc, baselines=["vanilla", "star"]))
    done = {s.key: f"art:{s.key}" for s in steps}
    inputs = {s.key: inputs_for(s, done, steps) for s in steps}
    assert inputs["base/evaluate"] == {} and inputs["polya/selfgen"] == {}
    assert inputs["polya/filter"] == {"selfgen": "art:polya/selfgen"}
    assert inputs["polya/midtrain"] == {"filter": "art:polya/filter"}
    assert inputs["polya-sft/evaluate"] == {MODEL_SLOT: "art:polya/midtrain"}
    assert inputs["polya/grpo"] == {MODEL_SLOT: "art:polya/midtrain"}
    assert inputs["polya/evaluate"] == {MODEL_SLOT: "art:polya/grpo"}
    assert inputs["vanilla/grpo"] == {}  # GRPO from the base model
    assert inputs["vanilla/evaluate"] == {MODEL_SLOT: "art:vanilla/grpo"}
    assert inputs["star/filter"] == {"selfgen": "art:star/selfgen"}
    assert inputs["star/evaluate"] == {MODEL_SLOT: "art:star/grpo"}


def test_a_planned_input_that_has_not_completed_is_an_error_not_the_base_model(local_doc):
    steps = plan(spec_of(local_doc))
    grpo = PlannedStage(Arm.POLYA, Stage.GRPO)
    with pytest.raises(KeyError, match="polya/midtrain"):
        inputs_for(grpo, {}, steps)
    no_sft = plan(spec_of(local_doc, midTraining__enabled=False))
    assert inputs_for(grpo, {}, no_sft) == {}  # mid-training is off: GRPO starts from the base model


def test_table_entries_point_at_real_sections_and_modules():
    for definition in STAGES.values():
        assert definition.section in PolyaRunSpec.model_fields, definition.name
        assert callable(importlib.import_module(definition.module).run), definition.name
        for slot in definition.inputs:
            assert slot == MODEL_SLOT or Stage(slot) in STAGES
    for a in ARMS.values():
        assert all(s in STAGES for s in a.stages)


def test_accelerator_needs_come_from_each_stage_block(local_doc):
    spec = spec_of(local_doc, grpo__workers=4, grpo__gpusPerWorker=1,
                   grpo__rollout={"replicas": 2, "gpusPerReplica": 1},
                   evaluation__replicas=3, evaluation__gpusPerReplica=0.5,
                   filtering__rewardModel={"kind": "embedding", "replicas": 2, "gpusPerReplica": 0.25})
    assert STAGES[Stage.GRPO].accelerators(spec) == (6, 1)
    assert STAGES[Stage.EVALUATE].accelerators(spec) == (3, 0.5)
    assert STAGES[Stage.FILTER].accelerators(spec) == (2, 0.25)
    assert STAGES[Stage.MIDTRAIN].accelerators(spec) == (spec.midTraining.workers, 0)


# ------------------------------------------------------------------------------------------ cache keys
def grpo_key(spec: PolyaRunSpec, arm: Arm = Arm.POLYA, inputs: dict | None = None) -> str:
    return cache_key(STAGES[Stage.GRPO], spec, ARMS[arm], inputs or {MODEL_SLOT: "midtrain:abc"})


def test_a_new_grpo_field_enters_the_key_without_editing_any_list(local_doc):
    class WithNewKnob(GRPOSpec):
        entropyBonus: float = 0.0  # a field nobody listed anywhere

    class WithNewPlacement(GRPOSpec):
        rolloutPriority: Annotated[int, NOT_IN_KEY] = 0  # says where work runs, not what it computes

    spec = spec_of(local_doc)
    base = grpo_key(spec)
    knob = spec.model_copy(update={"grpo": WithNewKnob(**spec.grpo.model_dump())})
    assert grpo_key(knob) != base
    knob2 = spec.model_copy(update={"grpo": WithNewKnob(**spec.grpo.model_dump(), entropyBonus=0.1)})
    assert grpo_key(knob2) not in {base, grpo_key(knob)}
    placed = spec.model_copy(update={"grpo": WithNewPlacement(**spec.grpo.model_dump(), rolloutPriority=7)})
    assert grpo_key(placed) == base


def test_marked_fields_stay_out_of_keys_and_the_rest_are_in(local_doc):
    local_doc["spec"]["grpo"].pop("dataset")  # GRPO reads spec.dataset (the default)
    base = grpo_key(spec_of(local_doc))
    for same in ({"grpo__workers": 3}, {"grpo__checkpointEvery": 7}, {"grpo__weightSync": "objectStore"},
                 {"grpo__rollout": {"replicas": 2, "maxTokens": local_doc["spec"]["grpo"]["rollout"]["maxTokens"]}},
                 {"grpo__gpusPerWorker": 0.5}, {"grpo__enabled": True}):
        merged = copy.deepcopy(local_doc)
        if "grpo__rollout" in same:
            merged["spec"]["grpo"]["rollout"].update(same.pop("grpo__rollout"))
        assert grpo_key(spec_of(merged, **same)) == base, same
    for other in ({"grpo__learningRate": 3e-6}, {"grpo__groupSize": 3}, {"seed": 5}, {"dataset__limit": 3},
                  {"model__maxModelLen": 1536}, {"filtering__verifyTimeoutSeconds": 9.0},
                  {"heuristics__fewShot": False}):
        assert grpo_key(spec_of(local_doc, **other)) != base, other
    assert grpo_key(spec_of(local_doc), inputs={MODEL_SLOT: "midtrain:other"}) != base


def test_keys_carry_the_arm(local_doc):
    """Outputs and metrics name their arm: vanilla GRPO from the base model and polya GRPO with mid-training
    off do the same work, yet keep separate artifacts (as before the table)."""
    spec = spec_of(local_doc)
    selfgen = STAGES[Stage.SELFGEN]
    assert cache_key(selfgen, spec, ARMS[Arm.STAR], {}) != cache_key(selfgen, spec, ARMS[Arm.POLYA], {})
    assert grpo_key(spec, Arm.VANILLA, inputs={}) != grpo_key(spec, Arm.POLYA, inputs={})


def test_every_stage_key_reads_real_spec_paths_and_is_stable(local_doc):
    """A misspelled path in a table entry fails here, not in a slow test; keys are 16 hex chars and
    insensitive to dict order."""
    judged = spec_of(local_doc, filtering__rewardModel={"kind": "judge", "name": "builtin:smollm2-135m-instruct"},
                     evaluation__composition={"classifier": "judge"})
    for spec in (spec_of(local_doc), judged):
        for definition in STAGES.values():
            inputs = {slot: f"x:{slot}" for slot in definition.inputs}
            key = cache_key(definition, spec, ARMS[Arm.POLYA], inputs)
            assert len(key) == 16 and int(key, 16) >= 0
            assert key == cache_key(definition, spec, ARMS[Arm.POLYA], dict(reversed(list(inputs.items()))))


def test_a_judges_model_settings_enter_the_filter_key(local_doc):
    flt = STAGES[Stage.FILTER]
    judge = {"kind": "judge", "name": "builtin:smollm2-135m-instruct"}
    a = spec_of(local_doc, filtering__rewardModel=judge)
    b = spec_of(local_doc, filtering__rewardModel=judge, model__maxModelLen=1536)
    assert cache_key(flt, a, ARMS[Arm.POLYA], {}) != cache_key(flt, b, ARMS[Arm.POLYA], {})
    embed = spec_of(local_doc)
    embed2 = spec_of(local_doc, model__maxModelLen=1536)
    assert cache_key(flt, embed, ARMS[Arm.POLYA], {}) == cache_key(flt, embed2, ARMS[Arm.POLYA], {})


def test_the_composition_judge_enters_evaluation_keys_only_when_it_judges(local_doc):
    ev = STAGES[Stage.EVALUATE]
    embed_a = spec_of(local_doc, filtering__rewardModel={"kind": "embedding"})
    embed_b = spec_of(local_doc, filtering__rewardModel={"kind": "classifier", "name": "builtin:smollm2-135m-instruct"})
    assert cache_key(ev, embed_a, ARMS[Arm.BASE], {}) == cache_key(ev, embed_b, ARMS[Arm.BASE], {})
    judge = {"kind": "judge", "name": "builtin:smollm2-135m-instruct"}
    judged = spec_of(local_doc, filtering__rewardModel=judge, evaluation__composition={"classifier": "judge"})
    other = dict(judge, name="org/another-judge")
    judged2 = spec_of(local_doc, filtering__rewardModel=other, evaluation__composition={"classifier": "judge"})
    assert cache_key(ev, judged, ARMS[Arm.BASE], {}) != cache_key(ev, judged2, ARMS[Arm.BASE], {})


def test_grpo_dataset_replaces_the_runs_dataset_in_the_grpo_key(local_doc):
    """Budget-matched arms (different dataset.limit) that set the same grpo.dataset share their RL questions,
    and the GRPO key says so: it follows grpo.dataset, not dataset."""
    local_doc["spec"]["grpo"].pop("dataset")  # the default: GRPO reads spec.dataset
    shared = {"source": "builtin:arithmetic", "limit": 6, "seed": 3}
    a = spec_of(local_doc, dataset__limit=4, grpo__dataset=shared)
    b = spec_of(local_doc, dataset__limit=9, grpo__dataset=shared)
    assert grpo_key(a) == grpo_key(b)
    assert grpo_key(spec_of(local_doc, dataset__limit=4)) != grpo_key(spec_of(local_doc, dataset__limit=9))
    assert grpo_key(spec_of(local_doc, grpo__dataset=dict(shared, limit=7))) != grpo_key(a)


def test_a_teachers_traces_are_shared_by_its_students(local_doc):
    """With selfGeneration.model the traces are the teacher's: the self-generation key follows it, not the run's
    model; without it, the run's model writes them and its key follows the run's model."""
    selfgen = STAGES[Stage.SELFGEN]
    teacher = {"name": "org/teacher", "maxModelLen": 8192}

    def key(**over):
        return cache_key(selfgen, spec_of(local_doc, **over), ARMS[Arm.POLYA], {})

    assert key(selfGeneration__model=teacher) == key(selfGeneration__model=teacher, model__name="org/student")
    assert key(selfGeneration__model=teacher) != key(selfGeneration__model=dict(teacher, name="org/other"))
    assert key() != key(model__name="org/student")
    assert key(selfGeneration__model=teacher) != key()
