"""The CRD is generated from the models, checked in, structural, and accepts exactly what the models accept."""
from __future__ import annotations

import jsonschema
import kubernetes_validate
import pytest
import yaml

from conftest import EXAMPLES, REPO
from polya import crd


def test_checked_in_crd_matches_models():
    checked_in = (REPO / crd.CRD_PATH).read_text()
    assert checked_in == crd.render_crd(), "k8s/crds/polya.dev_polyaruns.yaml drifted: run `polya crd --write`"


@pytest.mark.parametrize("path", [crd.CRD_PATH, crd.SWEEP_CRD_PATH])
def test_crd_validates_with_kubernetes_validate(path):
    doc = yaml.safe_load((REPO / path).read_text())
    for version in ("1.25", "1.30", "1.37"):
        kubernetes_validate.validate(doc, version, strict=True)


def test_sweep_crd_takes_the_example_and_refuses_a_typo_in_its_template():
    """The PolyaSweep CRD: short name psweep, the template typed as a PolyaRun spec (a misspelt field refused),
    an arm's overrides free-form (any JSON value under a dotted path)."""
    doc = yaml.safe_load((REPO / crd.SWEEP_CRD_PATH).read_text())
    assert doc["spec"]["names"]["shortNames"] == ["psweep"] and doc["spec"]["names"]["kind"] == "PolyaSweep"
    schema = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    sweep = yaml.safe_load((REPO / "k8s/examples/polya-sweep.yaml").read_text())
    jsonschema.Draft4Validator(schema).validate(sweep)  # OpenAPI v3.0 numbers follow draft 4
    jsonschema.Draft4Validator(_closed(schema)).validate(sweep)
    bad = yaml.safe_load(yaml.safe_dump(sweep))
    bad["spec"]["template"]["grpo"]["grupSize"] = 4
    with pytest.raises(jsonschema.ValidationError, match="grupSize"):
        jsonschema.Draft4Validator(_closed(schema)).validate(bad)


def _closed(schema):
    """The schema with additionalProperties: false wherever properties are listed (what the API server's
    strict field validation does with unknown fields)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


def test_kubernetes_validate_catches_a_broken_crd():
    doc = crd.build_crd()
    doc["spec"]["versions"] = "v1alpha1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, "1.30", strict=True)


def _walk(node, path=""):
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = crd.openapi_schema()
    for path, node in _walk(schema):
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node and "const" not in node, path
        assert "title" not in node or path.endswith(".properties"), path
        if path.endswith(".properties") or path.endswith("x-kubernetes-validations"):
            continue
        if "properties" in node:
            assert node.get("type") == "object", path
            assert "additionalProperties" not in node, path
        if node.get("exclusiveMinimum") is not None:
            assert isinstance(node["exclusiveMinimum"], bool), path


def test_crd_shape():
    doc = crd.build_crd()
    assert doc["spec"]["names"]["shortNames"] == ["prun"]
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Phase"] == ".status.phase" and columns["Stage"] == ".status.currentStage"
    assert columns["Age"] == ".metadata.creationTimestamp"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["heuristics"]["properties"]["count"]["minimum"] == 1
    assert spec["properties"]["heuristics"]["properties"]["count"]["maximum"] == 64
    assert spec["properties"]["grpo"]["properties"]["groupSize"]["minimum"] == 2
    lr = spec["properties"]["grpo"]["properties"]["learningRate"]
    assert lr["minimum"] == 0 and lr["exclusiveMinimum"] is True
    assert "x-kubernetes-validations" in spec["properties"]["evaluation"]
    assert "x-kubernetes-validations" not in str(crd.strip_cel(doc))


def _validator():
    return jsonschema.Draft4Validator(crd.openapi_schema())  # OpenAPI v3.0 numbers follow draft 4


@pytest.mark.parametrize("example", ["polya-run.yaml", "polya-run-local.yaml"])
def test_examples_satisfy_crd_schema(example):
    doc = yaml.safe_load((EXAMPLES / example).read_text())
    errors = list(_validator().iter_errors(doc))
    assert errors == []


@pytest.mark.parametrize(
    "path, value",
    [(("heuristics", "count"), 65), (("heuristics", "count"), 0), (("grpo", "groupSize"), 1),
     (("grpo", "learningRate"), 0), (("grpo", "lossAggregation"), "mean"), (("midTraining", "zeroStage"), 4)],
)
def test_crd_schema_refuses_what_models_refuse(local_doc, path, value):
    local_doc["spec"][path[0]][path[1]] = value
    errors = list(_validator().iter_errors(local_doc))
    assert any(list(e.absolute_path)[-2:] == list(path) for e in errors), [e.message for e in errors]


def test_token_budget_rules_sit_on_the_spec():
    """PolyaRunSpec's token-budget rule is mirrored as CEL on the spec object: one rule per stage that generates,
    each naming its field, with the models' defaults where a field is left out (and GRPO's enabled switch)."""
    from polya.spec import MIN_PROMPT_TOKENS, EvaluationSpec, ModelSpec, RolloutSpec, SelfGenerationSpec

    spec = crd.openapi_schema()["properties"]["spec"]
    rules = {r["message"].split()[0]: r["rule"] for r in spec["x-kubernetes-validations"]}
    assert set(rules) == {"spec.selfGeneration.maxTokens", "spec.grpo.rollout.maxTokens", "spec.evaluation.maxTokens"}
    limit = f"self.model.maxModelLen : {ModelSpec.model_fields['maxModelLen'].default})"
    for field, default in (("selfGeneration", SelfGenerationSpec), ("grpo.rollout", RolloutSpec),
                           ("evaluation", EvaluationSpec)):
        rule = rules[f"spec.{field}.maxTokens"]
        assert f"has(self.{field}.maxTokens) ? self.{field}.maxTokens : " \
               f"{default.model_fields['maxTokens'].default}) + {MIN_PROMPT_TOKENS} <= " in rule
        assert rule.endswith(limit) or rule.endswith(limit + ")")
    assert rules["spec.grpo.rollout.maxTokens"].startswith("!(has(self.grpo) && has(self.grpo.enabled) ? "
                                                           "self.grpo.enabled : true) || ")
    assert "x-kubernetes-validations" not in crd.strip_cel(crd.build_crd())["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]["properties"]["spec"]
