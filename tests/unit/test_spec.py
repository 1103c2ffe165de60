"""The PolyaRun models: defaults, ranges, cross-field rules and error messages that name the field."""
from __future__ import annotations

import pytest

from polya.spec import GRPOSpec, PolyaRun, uri_scheme
from polya.validation import validate_doc


def errors_of(doc) -> list[str]:
    run, errors = validate_doc(doc)
    assert run is None, "expected the document to be refused"
    return [str(e) for e in errors]


def test_examples_are_valid(local_doc):
    run = PolyaRun.model_validate(local_doc)
    assert run.spec.heuristics.selected_ids() == ["decompose-recombine", "work-backwards", "auxiliary-element", "analogy"]
    assert run.spec.evaluation.k == [1, 2, 4, 8]
    # defaults filled from the models
    assert run.spec.filtering.rewardModel.name == "builtin:all-minilm-l6-v2"
    assert run.spec.grpo.clip_high == run.spec.grpo.clipRatio == 0.2


def test_heuristics_count_defaults_to_16(local_doc):
    del local_doc["spec"]["heuristics"]
    assert len(PolyaRun.model_validate(local_doc).spec.heuristics.selected_ids()) == 16


@pytest.mark.parametrize(
    "mutate, path, fragment",
    [
        (lambda s: s["grpo"].update(grupSize=4), "spec.grpo.grupSize", "did you mean 'groupSize'"),
        (lambda s: s["heuristics"].update(count=0), "spec.heuristics.count", "greater than or equal to 1"),
        (lambda s: s["heuristics"].update(count=65), "spec.heuristics.count", "less than or equal to 64"),
        (lambda s: s["grpo"].update(groupSize=1), "spec.grpo.groupSize", "greater than or equal to 2"),
        (lambda s: s["evaluation"].update(k=[1, 16]), "spec.evaluation.k", "k=[16]"),
        (lambda s: s["midTraining"].update(learningRate=-1e-5), "spec.midTraining.learningRate", "greater than 0"),
        (lambda s: s["grpo"].update(learningRate=0), "spec.grpo.learningRate", "greater than 0"),
        (lambda s: s["storage"].update(uri="ftp://host/run"), "spec.storage.uri", "unsupported storage scheme 'ftp'"),
        (lambda s: s.pop("model"), "spec.model", "required field is missing"),
        (lambda s: s["model"].update(name="builtin:gpt-5"), "spec.model.name", "unknown builtin 'gpt-5'"),
        (lambda s: s["selfGeneration"].update(temperature=-0.1), "spec.selfGeneration.temperature", "greater than or equal to 0"),
        (lambda s: s["filtering"].update(keepIncorrect=1.5), "spec.filtering.keepIncorrect", "less than or equal to 1"),
        (lambda s: s["grpo"].update(lossAggregation="mean"), "spec.grpo.lossAggregation", "'token', 'sequence' or 'constant'"),
        (lambda s: s["midTraining"].update(zeroStage=4), "spec.midTraining.zeroStage", "less than or equal to 3"),
        (lambda s: s["heuristics"].update(names=["analogy"]), "spec.heuristics", "not both"),
        (lambda s: s["heuristics"].update(count=None, names=["analogy", "nope"]), "spec.heuristics.names", "'nope'"),
        (lambda s: s["filtering"].update(rewardModel={"kind": "judge"}), "spec.filtering.rewardModel", "name is required"),
        (lambda s: s["dataset"].update(source="gopher://x"), "spec.dataset.source", "unsupported scheme 'gopher'"),
        (lambda s: s.update(baselines=["vanilla", "vanilla"]), "spec", "twice"),
        (lambda s: s["evaluation"].update(benchmarks=[]), "spec.evaluation.benchmarks", "at least 1"),
        (lambda s: s["evaluation"].update(maxTokens=2048), "spec.evaluation.maxTokens", "lower it to <= 1792"),
        (lambda s: s["grpo"]["rollout"].update(maxTokens=1793), "spec.grpo.rollout.maxTokens", "leave 255 of"),
        (lambda s: s["selfGeneration"].pop("maxTokens"), "spec.selfGeneration.maxTokens", "2048 generated tokens"),
        (lambda s: s["model"].update(maxModelLen=200), "spec.evaluation.maxTokens", "raise spec.model.maxModelLen"),
        (lambda s: s["filtering"].update(keep="incorrect", keepIncorrect=0.5), "spec.filtering", "set keepIncorrect to 0"),
        (lambda s: s["filtering"].update(incorrectPerQuestion=2), "spec.filtering", "set keep to 'incorrect'"),
        (lambda s: s["filtering"].update(keep="wrong"), "spec.filtering.keep", "'correct' or 'incorrect'"),
        (lambda s: s["filtering"].update(keep="incorrect", incorrectPerQuestion=0), "spec.filtering.incorrectPerQuestion",
         "greater than or equal to 1"),
        (lambda s: s["selfGeneration"].update(model={"name": "builtin:gpt-5"}), "spec.selfGeneration.model.name",
         "unknown builtin 'gpt-5'"),
        (lambda s: s["grpo"].update(dataset={"source": "gopher://x"}), "spec.grpo.dataset.source",
         "unsupported scheme 'gopher'"),
    ],
)
def test_bad_specs_name_the_field(local_doc, mutate, path, fragment):
    mutate(local_doc["spec"])
    messages = errors_of(local_doc)
    assert any(m.startswith(path + ":") and fragment in m for m in messages), messages


def test_metadata_name_must_be_dns_label(local_doc):
    local_doc["metadata"]["name"] = "Bad_Name"
    assert any(m.startswith("metadata.name:") for m in errors_of(local_doc))


def test_wrong_kind_refused(local_doc):
    local_doc["kind"] = "RayJob"
    assert any(m.startswith("kind:") and "'PolyaRun'" in m for m in errors_of(local_doc))


def test_all_errors_reported_at_once(local_doc):
    local_doc["spec"]["heuristics"]["count"] = 65
    local_doc["spec"]["grpo"]["groupSize"] = 1
    local_doc["spec"]["storage"]["uri"] = "ftp://x"
    assert len(errors_of(local_doc)) == 3


def test_clip_ratio_high_overrides():
    assert GRPOSpec(clipRatio=0.2, clipRatioHigh=0.28).clip_high == 0.28


@pytest.mark.parametrize(
    "uri, scheme",
    [("s3://b/k", "s3"), ("/abs/path", None), ("rel/path", None), ("builtin:arithmetic", "builtin"),
     ("hf://org/ds", "hf"), ("C:\\data", None), ("meta-llama/Llama-3.2-3B-Instruct", None)],
)
def test_uri_scheme(uri, scheme):
    assert uri_scheme(uri) == scheme


def test_k_is_sorted_and_deduplicated(local_doc):
    local_doc["spec"]["evaluation"]["k"] = [8, 1, 4, 1]
    assert PolyaRun.model_validate(local_doc).spec.evaluation.k == [1, 4, 8]


def test_token_budgets_leave_room_for_a_prompt(local_doc):
    """Each enabled stage's maxTokens leaves MIN_PROMPT_TOKENS of model.maxModelLen for the prompt: the
    boundary passes, one token more is refused at the field, every offending field is named, and a disabled
    GRPO stage (which sends no request) is not held to it."""
    from polya.spec import MIN_PROMPT_TOKENS

    spec = local_doc["spec"]
    limit = spec["model"]["maxModelLen"]
    spec["evaluation"]["maxTokens"] = spec["grpo"]["rollout"]["maxTokens"] = limit - MIN_PROMPT_TOKENS
    PolyaRun.model_validate(local_doc)
    spec["evaluation"]["maxTokens"] += 1
    spec["grpo"]["rollout"]["maxTokens"] += 1
    spec["selfGeneration"]["maxTokens"] = limit
    paths = sorted(m.split(":")[0] for m in errors_of(local_doc))
    assert paths == ["spec.evaluation.maxTokens", "spec.grpo.rollout.maxTokens", "spec.selfGeneration.maxTokens"]
    spec["selfGeneration"]["maxTokens"] = spec["evaluation"]["maxTokens"] = 64
    spec["grpo"]["enabled"] = False
    assert PolyaRun.model_validate(local_doc).spec.grpo.rollout.maxTokens == limit - MIN_PROMPT_TOKENS + 1


def test_self_generation_budget_is_the_generating_models(local_doc):
    """With selfGeneration.model (a teacher), self-generation's maxTokens is held to the teacher's context, the
    other stages to the run's model; the error names the teacher's field."""
    from polya.spec import MIN_PROMPT_TOKENS

    spec = local_doc["spec"]
    limit = spec["model"]["maxModelLen"]
    spec["selfGeneration"]["maxTokens"] = limit  # too long for the run's model...
    assert [m.split(":")[0] for m in errors_of(local_doc)] == ["spec.selfGeneration.maxTokens"]
    spec["selfGeneration"]["model"] = {"name": "org/teacher", "maxModelLen": limit + MIN_PROMPT_TOKENS}
    run = PolyaRun.model_validate(local_doc)  # ...and fits the teacher's
    assert run.spec.generator().name == "org/teacher" and run.spec.model.name != "org/teacher"
    spec["selfGeneration"]["model"]["maxModelLen"] = limit + MIN_PROMPT_TOKENS - 1
    messages = errors_of(local_doc)
    assert len(messages) == 1 and messages[0].startswith("spec.selfGeneration.maxTokens:")
    assert "selfGeneration.model.maxModelLen" in messages[0]


def test_grpo_dataset_defaults_to_the_runs(local_doc):
    local_doc["spec"]["grpo"].pop("dataset")  # the example sets one
    run = PolyaRun.model_validate(local_doc)
    assert run.spec.grpo.dataset is None and run.spec.rl_dataset() == run.spec.dataset
    local_doc["spec"]["grpo"]["dataset"] = {"source": "builtin:arithmetic", "limit": 7, "seed": 11}
    spec = PolyaRun.model_validate(local_doc).spec
    assert spec.rl_dataset().limit == 7 and spec.rl_dataset().seed == 11 and spec.dataset.limit != 7
