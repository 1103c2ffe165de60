"""PolyaSweep against a REAL API server (v1.20.2, the chart installed by `helm install`, the PolyaSweep CRD with
it): the operator process creates a sweep's child PolyaRuns and its status follows theirs.

The children are ordinary PolyaRuns, which the same operator drives stage by stage through RayJobs. No KubeRay
and no kubelet run here, so, as in test_operator_kube.py, the test reports each RayJob's outcome itself (a
stand-in for KubeRay); the children's phases and then the sweep's follow from the operator's own reconciles.
"""
from __future__ import annotations

import copy
import re
import subprocess
import urllib.request

import pytest
from kubernetes import client, config

from kube import wait_established, wait_for
from test_operator_kube import Operator, rayjobs, set_job

pytestmark = [pytest.mark.kube, pytest.mark.slow]
NS = "default"
G, V, RUNS, SWEEPS = "polya.dev", "v1alpha1", "polyaruns", "polyasweeps"


@pytest.fixture(scope="module")
def api(kube):
    c = config.new_client_from_config(str(kube))
    wait_established(c, ["polyasweeps.polya.dev"])  # the chart installs it beside the PolyaRun CRD
    return client.CustomObjectsApi(c), client.CoreV1Api(c)


@pytest.fixture(scope="module")
def operator(kube):
    op = Operator(kube, 18090).start()
    yield op
    op.stop()


def make_sweep(local_doc, name, arms, seeds, **template_over):
    """The local example as the template, without mid-training and GRPO: four stages (RayJobs) per child."""
    template = copy.deepcopy(local_doc["spec"])
    template["midTraining"]["enabled"] = template["grpo"]["enabled"] = False
    template["storage"] = {"uri": f"runs/{name}"}
    template.update(template_over)
    return {"apiVersion": f"{G}/{V}", "kind": "PolyaSweep", "metadata": {"name": name, "namespace": NS},
            "spec": {"template": template, "arms": arms, "seeds": seeds}}


def children(custom, sweep):
    items = custom.list_namespaced_custom_object(G, V, NS, RUNS, label_selector=f"polya.dev/sweep={sweep}")["items"]
    return {r["metadata"]["name"]: r for r in items}


def sweep_status(custom, name):
    return custom.get_namespaced_custom_object(G, V, NS, SWEEPS, name).get("status") or {}


def status_when(custom, name, test, what, timeout=60):
    return wait_for(lambda: (lambda st: st if test(st) else None)(sweep_status(custom, name)), timeout=timeout,
                    what=what)


def drive(custom, runs, timeout=120):
    """Stand-in for KubeRay: every RayJob of ``runs`` succeeds as soon as it exists, until each run Succeeded."""
    def done():
        for run in runs:
            for job in rayjobs(custom, run).values():
                if not (job.get("status") or {}).get("jobStatus"):
                    set_job(custom, job["metadata"]["name"], ok=True)
        phases = [(custom.get_namespaced_custom_object(G, V, NS, RUNS, r).get("status") or {}).get("phase")
                  for r in runs]
        return all(p == "Succeeded" for p in phases)
    wait_for(done, timeout=timeout, interval=0.5, what=f"{runs} succeeded")


def test_sweep_creates_owned_children_and_follows_their_phases(api, operator, local_doc, kube):
    custom, core = api
    arms = [{"name": "n1", "set": {"heuristics.count": 1, "dataset.limit": 32}}, {"name": "n4"}]
    sweep = custom.create_namespaced_custom_object(G, V, NS, SWEEPS, make_sweep(local_doc, "sw", arms, [0, 1]))
    kids = wait_for(lambda: (lambda k: k if len(k) == 4 else None)(children(custom, "sw")), what="4 children")
    assert set(kids) == {"sw-n1-s0", "sw-n1-s1", "sw-n4-s0", "sw-n4-s1"}
    for name, kid in kids.items():
        _, arm, seed = name.split("-")
        meta, spec = kid["metadata"], kid["spec"]
        assert meta["labels"] == {"polya.dev/sweep": "sw", "polya.dev/sweep-arm": arm,
                                  "polya.dev/sweep-seed": seed[1:]}
        assert meta["ownerReferences"] == [{"apiVersion": f"{G}/{V}", "kind": "PolyaSweep", "name": "sw",
                                            "uid": sweep["metadata"]["uid"], "controller": True,
                                            "blockOwnerDeletion": True}]
        assert spec["seed"] == int(seed[1:])
        assert (spec["heuristics"]["count"], spec["dataset"]["limit"]) == ((1, 32) if arm == "n1" else (4, 8))
        assert spec["storage"]["uri"] == f"runs/sw/runs/{name}" and spec["storage"]["artifacts"] == "runs/sw"
        assert spec["grpo"]["enabled"] is False and spec["model"]["name"] == local_doc["spec"]["model"]["name"]
    st = status_when(custom, "sw", lambda s: s.get("phase") == "Running", "sweep Running")
    assert st["total"] == 4 and st["observedGeneration"] == 1

    drive(custom, ["sw-n1-s0", "sw-n1-s1"])  # the operator runs each child's RayJobs, one stage at a time
    st = status_when(custom, "sw", lambda s: s.get("succeeded") == 2, "2 children succeeded")
    assert st["phase"] == "Running" and st["message"] == "2/4 children succeeded"
    drive(custom, ["sw-n4-s0", "sw-n4-s1"])
    st = status_when(custom, "sw", lambda s: s.get("phase") == "Succeeded", "sweep Succeeded")
    assert st["succeeded"] == st["total"] == 4 and {c["phase"] for c in st["children"]} == {"Succeeded"}
    assert [c["name"] for c in st["children"]] == ["sw-n1-s0", "sw-n1-s1", "sw-n4-s0", "sw-n4-s1"]
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=10) as r:
        exposed = r.read().decode()  # the operator's Prometheus metrics follow the sweep
    assert 'polya_operator_sweep_progress_ratio{namespace="default",sweep="sw"} 1.0' in exposed
    assert re.search(r'^polya_operator_sweeps\{phase="Succeeded"\} [1-9]', exposed, re.M), exposed[-2000:]
    events = core.list_namespaced_event(NS, field_selector="involvedObject.name=sw").items
    assert {"ChildrenCreated", "SweepSucceeded"} <= {e.reason for e in events}
    assert {e.involved_object.kind for e in events} == {"PolyaSweep"}

    table = subprocess.run(["kubectl", "--kubeconfig", str(kube), "get", "psweep", "-n", NS], capture_output=True,
                           text=True, timeout=60)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "SUCCEEDED", "TOTAL", "AGE"]
    assert next(line.split() for line in lines[1:] if line.split()[0] == "sw")[1:4] == ["Succeeded", "4", "4"]


def test_a_failed_child_fails_the_sweep_while_the_others_run_on(api, operator, local_doc):
    custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, SWEEPS,
                                           make_sweep(local_doc, "swf", [{"name": "a"}], [0, 1], maxStageRetries=0))
    wait_for(lambda: "swf-a-s0-base-evaluate-1" in rayjobs(custom, "swf-a-s0"), what="the child's first RayJob")
    set_job(custom, "swf-a-s0-base-evaluate-1", ok=False, message="CUDA out of memory")
    st = status_when(custom, "swf", lambda s: s.get("phase") == "Failed", "sweep Failed")
    assert st["failed"] == 1 and st["message"] == "0/2 children succeeded; failed: swf-a-s0"
    wait_for(lambda: (children(custom, "swf")["swf-a-s1"].get("status") or {}).get("phase") == "Running",
             what="the other child running on")

    # a child edited by hand is left as it is, and named
    custom.patch_namespaced_custom_object(G, V, NS, RUNS, "swf-a-s1", {"spec": {"evaluation": {"temperature": 0.7}}})
    st = status_when(custom, "swf", lambda s: "left as is" in (s.get("message") or ""), "drift reported")
    assert "swf-a-s1 (spec.evaluation.temperature)" in st["message"]
    # a deleted child is created again, from the sweep
    old = children(custom, "swf")["swf-a-s1"]["metadata"]["uid"]
    custom.delete_namespaced_custom_object(G, V, NS, RUNS, "swf-a-s1")
    again = wait_for(lambda: (lambda k: k if k and k["metadata"]["uid"] != old else None)(
        children(custom, "swf").get("swf-a-s1")), what="the child created again")
    assert again["spec"]["evaluation"]["temperature"] == local_doc["spec"]["evaluation"]["temperature"]
    status_when(custom, "swf", lambda s: "left as is" not in (s.get("message") or ""), "drift gone")


def test_an_invalid_sweep_fails_with_the_field_and_creates_nothing(api, operator, local_doc):
    custom, _ = api
    doc = make_sweep(local_doc, "swbad", [{"name": "a", "set": {"heuristics.cnt": 2}}], [0])
    custom.create_namespaced_custom_object(G, V, NS, SWEEPS, doc)  # `set` is free-form: the operator checks it
    st = status_when(custom, "swbad", lambda s: s.get("phase") == "Failed", "sweep Failed")
    assert st["message"].startswith("invalid sweep: spec.arms[0].set.heuristics.cnt")
    assert children(custom, "swbad") == {}
