"""The PolyaSweep controller's pure decision (`polya_operator.sweep.reconcile_sweep`), with hand-built children."""
from __future__ import annotations

import copy

import pytest
import yaml

from conftest import EXAMPLES
from polya.spec import PolyaRunSpec
from polya.sweep import LABEL_SWEEP, LABEL_SWEEP_ARM, LABEL_SWEEP_SEED, load_sweep
from polya_operator.sweep import reconcile_sweep

NAMES = ["sw-one-s0", "sw-one-s1", "sw-four-s0", "sw-four-s1"]


@pytest.fixture
def sweep(local_doc):
    template = copy.deepcopy(local_doc["spec"])
    template["storage"] = {"uri": "s3://bucket/sw"}
    return {"apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep",
            "metadata": {"name": "sw", "namespace": "ns", "uid": "sweep-uid", "generation": 2},
            "spec": {"template": template, "seeds": [0, 1],
                     "arms": [{"name": "one", "set": {"heuristics.count": 1, "dataset.limit": 32}},
                              {"name": "four"}]}}


def created(sweep, phases=None):
    """The children the first pass creates, as the API server would return them (with ``phases``)."""
    out = {c["metadata"]["name"]: c for c in reconcile_sweep(sweep, {}).create}
    for name, phase in (phases or {}).items():
        out[name]["status"] = {"phase": phase}
    return out


def test_first_pass_creates_every_child_owned_and_named_deterministically(sweep):
    d = reconcile_sweep(sweep, {})
    assert [c["metadata"]["name"] for c in d.create] == NAMES
    first = d.create[0]
    assert first["kind"] == "PolyaRun" and first["metadata"]["namespace"] == "ns"
    assert first["metadata"]["labels"] == {LABEL_SWEEP: "sw", LABEL_SWEEP_ARM: "one", LABEL_SWEEP_SEED: "0"}
    assert first["metadata"]["ownerReferences"] == [{
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep", "name": "sw", "uid": "sweep-uid",
        "controller": True, "blockOwnerDeletion": True}]
    spec = PolyaRunSpec.model_validate(first["spec"])  # a full, valid PolyaRun spec
    assert (spec.seed, spec.heuristics.count, spec.dataset.limit) == (0, 1, 32)
    assert spec.storage.uri == "s3://bucket/sw/runs/sw-one-s0" and spec.storage.artifacts == "s3://bucket/sw"
    four = PolyaRunSpec.model_validate(d.create[3]["spec"])
    assert (four.seed, four.heuristics.count, four.dataset.limit) == (1, 4, 8)
    # children just created count as Pending: the sweep is under way
    assert d.status["phase"] == "Running" and d.status["total"] == 4 and d.status["observedGeneration"] == 2
    assert [(c["name"], c["phase"]) for c in d.status["children"]] == [(n, "Pending") for n in NAMES]
    assert [e.reason for e in d.events] == ["ChildrenCreated"] and not d.blocked


def test_a_second_pass_creates_nothing_and_changes_nothing(sweep):
    first = reconcile_sweep(sweep, {})
    sweep["status"] = first.status
    again = reconcile_sweep(sweep, created(sweep))
    assert again.create == [] and again.events == [] and again.status == first.status


def test_status_aggregates_the_childrens_phases(sweep):
    d = reconcile_sweep(sweep, created(sweep, {"sw-one-s0": "Running", "sw-one-s1": "Succeeded"}))
    assert d.create == [] and d.status["phase"] == "Running" and d.status["succeeded"] == 1
    d = reconcile_sweep(sweep, created(sweep, dict.fromkeys(NAMES, "Succeeded")))
    assert d.status["phase"] == "Succeeded" and d.status["message"] == "4/4 children succeeded"
    assert [e.reason for e in d.events] == ["SweepSucceeded"]
    sweep["status"] = d.status
    assert reconcile_sweep(sweep, created(sweep, dict.fromkeys(NAMES, "Succeeded"))).events == []  # said once
    d = reconcile_sweep(sweep, created(sweep, {**dict.fromkeys(NAMES, "Running"), "sw-four-s1": "Failed"}))
    assert d.status["phase"] == "Failed" and d.status["failed"] == 1
    assert "failed: sw-four-s1" in d.status["message"] and d.events[0].type == "Warning"


def test_a_deleted_child_is_created_again(sweep):
    kids = created(sweep, dict.fromkeys(NAMES, "Running"))
    del kids["sw-four-s0"]
    d = reconcile_sweep(sweep, kids)
    assert [c["metadata"]["name"] for c in d.create] == ["sw-four-s0"]


def test_suspend_creates_no_child(sweep):
    sweep["spec"]["suspend"] = True
    d = reconcile_sweep(sweep, {})
    assert d.create == [] and d.status["phase"] == "Suspended"
    assert "spec.suspend is true: 4 child(ren) not created" in d.status["message"]
    kids = created({**sweep, "spec": {**sweep["spec"], "suspend": False}}, {"sw-one-s0": "Running"})
    d = reconcile_sweep(sweep, {"sw-one-s0": kids["sw-one-s0"]})  # a running child runs on: the sweep says so
    assert d.create == [] and d.status["phase"] == "Running"


@pytest.mark.parametrize("arm, field", [
    ({"name": "bad", "set": {"heuristics.cnt": 2}}, "spec.arms[0].set.heuristics.cnt"),
    ({"name": "bad", "set": {"grpo.groupSize": 1}}, "spec.arms[0].set.grpo.groupSize"),
    ({"name": "Bad", "set": {}}, "spec.arms[0].name"),
])
def test_an_invalid_sweep_fails_with_the_field_and_creates_nothing(sweep, arm, field):
    sweep["spec"]["arms"] = [arm]
    d = reconcile_sweep(sweep, {})
    assert d.create == [] and d.status["phase"] == "Failed" and d.status["observedGeneration"] == 2
    assert d.status["message"].startswith("invalid sweep: ") and field in d.status["message"]
    assert "\n" not in d.status["message"] and [e.reason for e in d.events] == ["InvalidSpec"]
    sweep["status"] = d.status
    assert reconcile_sweep(sweep, {}).events == []  # said once


def test_a_namesake_the_sweep_does_not_own_is_not_adopted(sweep):
    kids = created(sweep, dict.fromkeys(NAMES, "Succeeded"))
    kids["sw-one-s1"]["metadata"]["ownerReferences"][0]["uid"] = "an-older-sweep"
    d = reconcile_sweep(sweep, kids)
    assert d.create == [] and d.blocked == ["sw-one-s1"]
    assert d.status["phase"] == "Running" and d.status["succeeded"] == 3  # its phase is not this sweep's
    assert "not adopted" in d.status["message"] and "sw-one-s1" in d.status["message"]


def test_a_child_whose_spec_drifted_is_left_and_named(sweep):
    kids = created(sweep, dict.fromkeys(NAMES, "Succeeded"))
    sweep["spec"]["template"]["grpo"]["steps"] = 12  # the sweep was edited after its children ran
    kids["sw-one-s0"]["spec"]["evaluation"]["samples"] = 16  # and one child too
    d = reconcile_sweep(sweep, kids)
    assert d.create == [] and d.status["phase"] == "Succeeded"  # finished work stands
    msg = d.status["message"]
    assert "left as is" in msg and "sw-one-s0 (spec.evaluation.samples, spec.grpo.steps)" in msg
    assert all(f"{n} (" in msg for n in NAMES)  # all four differ (the template's edit)
    assert "ChildSpecDiffers" in [e.reason for e in d.events]


def test_children_no_longer_in_the_sweep_are_left_and_named(sweep):
    kids = created(sweep, dict.fromkeys(NAMES, "Succeeded"))
    sweep["spec"]["seeds"] = [0]
    d = reconcile_sweep(sweep, kids)
    assert d.create == [] and d.status["total"] == 2 and d.status["phase"] == "Succeeded"
    assert "no longer in the sweep, left as is: sw-four-s1, sw-one-s1" in d.status["message"]


def test_the_example_sweep_is_valid_and_its_children_fit():
    doc = yaml.safe_load((EXAMPLES / "polya-sweep.yaml").read_text())
    sweep = load_sweep(doc)
    doc["metadata"].update(uid="u", namespace="ns")
    d = reconcile_sweep(doc, {})
    assert len(d.create) == len(sweep.spec.arms) * len(sweep.spec.seeds) == 6
    assert d.status["phase"] == "Running" and "invalid" not in d.status["message"]


def test_a_child_name_over_40_characters_fails_the_sweep(sweep):
    sweep["metadata"]["name"] = "s" * 34  # + "-four-s1": 42 characters
    d = reconcile_sweep(sweep, {})
    assert d.create == [] and d.status["phase"] == "Failed"
    assert "spec.arms[1].name" in d.status["message"] and "over 40" in d.status["message"]


def _child(name: str, rv: int, phase: str | None = None) -> dict:
    return {"metadata": {"name": name, "uid": f"u-{name}", "resourceVersion": str(rv), "generation": 1,
                         "labels": {LABEL_SWEEP: "sw"}}, "status": {"phase": phase} if phase else {}}


def test_the_sweep_cache_is_corrected_by_a_relist():
    """A missed watch event (a child's phase change, a deletion) is corrected when the sweep's children are
    listed again; a cached body newer than the listed one is kept."""
    from polya_operator.main import SweepCache

    cache = SweepCache()
    assert cache.stale("ns", "sw", 60.0)  # never listed
    cache.child_event("ns", _child("sw-a-s0", 5, "Running"), deleted=False)
    cache.child_event("ns", _child("sw-a-s1", 9, "Running"), deleted=False)
    cache.child_event("ns", _child("sw-gone", 3), deleted=False)
    # the API server now says: s0 succeeded (its event was missed), s1 is older than what the watch gave, gone is gone
    cache.refresh("ns", "sw", [_child("sw-a-s0", 7, "Succeeded"), _child("sw-a-s1", 8, "Pending")])
    kids = cache.of("ns", "sw")
    assert {n: k["status"].get("phase") for n, k in kids.items()} == {"sw-a-s0": "Succeeded", "sw-a-s1": "Running"}
    assert not cache.stale("ns", "sw", 60.0) and cache.stale("ns", "sw", -1.0)
    # a list read before a deletion the watch then reported does not bring the child back; a new one of that
    # name (a higher resourceVersion) is taken
    cache.child_event("ns", _child("sw-a-s1", 12, "Running"), deleted=True)
    cache.refresh("ns", "sw", [_child("sw-a-s0", 7, "Succeeded"), _child("sw-a-s1", 11, "Running")])
    assert set(cache.of("ns", "sw")) == {"sw-a-s0"}
    cache.refresh("ns", "sw", [_child("sw-a-s0", 7, "Succeeded"), _child("sw-a-s1", 15)])
    assert set(cache.of("ns", "sw")) == {"sw-a-s0", "sw-a-s1"}
    cache.forget("ns", "sw")
    assert cache.of("ns", "sw") == {} and cache.stale("ns", "sw", 60.0)


def test_sweep_metrics_follow_the_status():
    from prometheus_client import REGISTRY

    from polya_operator import metrics as M

    def value(name, **labels):
        return REGISTRY.get_sample_value(name, labels)

    M.record_sweep("ns", "m1", {"phase": "Running", "succeeded": 1, "total": 4})
    M.record_sweep("ns", "m2", {"phase": "Running", "succeeded": 0, "total": 2})
    assert value("polya_operator_sweep_progress_ratio", namespace="ns", sweep="m1") == 0.25
    assert value("polya_operator_sweeps", phase="Running") == 2
    M.record_sweep("ns", "m1", {"phase": "Succeeded", "succeeded": 4, "total": 4})
    assert value("polya_operator_sweeps", phase="Running") == 1
    assert value("polya_operator_sweeps", phase="Succeeded") == 1
    assert value("polya_operator_sweep_progress_ratio", namespace="ns", sweep="m1") == 1.0
    M.record_sweep("ns", "m1", None)
    M.record_sweep("ns", "m2", None)
    assert value("polya_operator_sweep_progress_ratio", namespace="ns", sweep="m1") is None
    assert value("polya_operator_sweeps", phase="Succeeded") == 0
