"""The operator against a REAL API server (v1.20.2 built from Debian's source) with KubeRay's CRDs.

No scheduler or kubelet runs here, so no pod and no RayJob ever executes: where KubeRay's operator would
report a RayJob's outcome, these tests patch the RayJob's status themselves (a stand-in for KubeRay +
a kubelet, nothing else is faked). The PolyaRun operator runs as its real process (`polya-operator`).
"""
from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kube import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.slow]
NS = "default"
G, V, P = "polya.dev", "v1alpha1", "polyaruns"


@pytest.fixture(scope="module")
def api(kube):
    c = config.new_client_from_config(str(kube))
    return client.CustomObjectsApi(c), client.CoreV1Api(c)


class Operator:
    def __init__(self, kubeconfig, port):
        self.kubeconfig, self.port, self.proc = kubeconfig, port, None

    def start(self):
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), POLYA_OPERATOR_TIMER_S="1",
                   POLYA_OPERATOR_BACKOFF_S="1", POLYA_LOG_LEVEL="INFO")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "polya_operator.main", "--all-namespaces", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(self.port), "--liveness", f"http://127.0.0.1:{self.port + 1}/healthz"],
            env=env, stdout=subprocess.DEVNULL, stderr=open(f"/tmp/polya-operator-{self.port}.log", "ab"))
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def operator(kube):
    op = Operator(kube, 18080).start()
    yield op
    op.stop()


def make_run(local_doc, name, **spec_over):
    doc = copy.deepcopy(local_doc)
    doc["metadata"] = {"name": name, "namespace": NS}
    doc["spec"].update(spec_over)
    return doc


def rayjobs(custom, run):
    items = custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", label_selector=f"polya.dev/run={run}")["items"]
    return {j["metadata"]["name"]: j for j in items}


def set_job(custom, name, ok, message=None):
    """Stand-in for KubeRay reporting a finished job (no kubelet here to run it)."""
    body = {"status": {"jobStatus": "SUCCEEDED" if ok else "FAILED",
                       "jobDeploymentStatus": "Complete" if ok else "Failed", "message": message}}
    custom.patch_namespaced_custom_object_status("ray.io", "v1", NS, "rayjobs", name, body)


def get_run(custom, name):
    return custom.get_namespaced_custom_object(G, V, NS, P, name)


def test_run_advances_stage_by_stage(api, operator, local_doc):
    custom, core = api
    run = custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "adv"))
    first = wait_for(lambda: rayjobs(custom, "adv").get("adv-base-evaluate-1"), what="first RayJob")
    ref = first["metadata"]["ownerReferences"][0]
    assert ref["kind"] == "PolyaRun" and ref["uid"] == run["metadata"]["uid"] and ref["controller"] is True
    assert first["spec"]["entrypoint"].startswith("polya stage evaluate --spec /etc/polya/run.yaml")
    cm = core.read_namespaced_config_map("adv-spec", NS)
    assert yaml.safe_load(cm.data["run.yaml"])["spec"]["heuristics"]["count"] == 4
    st = wait_for(lambda: (get_run(custom, "adv").get("status") or {}).get("phase") == "Running" and get_run(custom, "adv")["status"])
    assert st["currentStage"] == "base/evaluate" and st["observedGeneration"] == 1

    set_job(custom, "adv-base-evaluate-1", ok=True)
    wait_for(lambda: "adv-polya-selfgen-1" in rayjobs(custom, "adv"), what="second RayJob")
    st = wait_for(lambda: get_run(custom, "adv")["status"]["currentStage"] == "polya/selfgen" and get_run(custom, "adv")["status"])
    stages = {s["name"]: s for s in st["stages"]}
    assert stages["base/evaluate"]["phase"] == "Succeeded" and stages["polya/selfgen"]["phase"] == "Running"
    events = core.list_namespaced_event(NS, field_selector="involvedObject.name=adv").items
    assert {"StageStarted", "StageSucceeded"} <= {e.reason for e in events}


def test_failed_stage_retries_then_fails_run(api, operator, local_doc):
    custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "fail", maxStageRetries=1))
    wait_for(lambda: "fail-base-evaluate-1" in rayjobs(custom, "fail"))
    set_job(custom, "fail-base-evaluate-1", ok=False, message="Job entrypoint command failed with exit code 1")
    wait_for(lambda: "fail-base-evaluate-2" in rayjobs(custom, "fail"), timeout=30, what="retry RayJob")
    set_job(custom, "fail-base-evaluate-2", ok=False, message="CUDA out of memory")
    st = wait_for(lambda: get_run(custom, "fail").get("status", {}).get("phase") == "Failed" and get_run(custom, "fail")["status"])
    assert "base/evaluate failed after 2 attempt(s): CUDA out of memory" in st["message"]
    time.sleep(2.5)
    assert set(rayjobs(custom, "fail")) == {"fail-base-evaluate-1", "fail-base-evaluate-2"}  # nothing after failing


def test_restarted_operator_creates_no_duplicates(api, operator, local_doc):
    custom, _ = api
    custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "restart"))
    wait_for(lambda: "restart-base-evaluate-1" in rayjobs(custom, "restart"))
    operator.kill()
    set_job(custom, "restart-base-evaluate-1", ok=True)  # the job finishes while no operator is up
    operator.start()
    wait_for(lambda: "restart-polya-selfgen-1" in rayjobs(custom, "restart"), timeout=60, what="adopted progress")
    time.sleep(3)  # several timer ticks of the new operator
    assert set(rayjobs(custom, "restart")) == {"restart-base-evaluate-1", "restart-polya-selfgen-1"}
    st = get_run(custom, "restart")["status"]
    assert [s["attempts"] for s in st["stages"][:2]] == [1, 1]


def test_deleting_the_run_removes_its_children(api, operator, local_doc):
    custom, core = api
    custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "gone"))
    wait_for(lambda: "gone-base-evaluate-1" in rayjobs(custom, "gone"))
    custom.delete_namespaced_custom_object(G, V, NS, P, "gone")
    # the controller manager's garbage collector picks up new CRDs on its ~30 s resync
    wait_for(lambda: not rayjobs(custom, "gone"), timeout=120, interval=1, what="garbage collection of RayJobs")
    with pytest.raises(ApiException) as err:
        core.read_namespaced_config_map("gone-spec", NS)
    assert err.value.status == 404


@pytest.mark.parametrize("path, value, field", [
    (("heuristics", "count"), 65, "spec.heuristics.count"),
    (("grpo", "groupSize"), 1, "spec.grpo.groupSize"),
    (("storage", "uri"), 7, "spec.storage.uri"),
])
def test_malformed_run_refused_by_api_server(api, local_doc, path, value, field):
    custom, _ = api
    doc = make_run(local_doc, "bad")
    doc["spec"][path[0]][path[1]] = value
    with pytest.raises(ApiException) as err:
        custom.create_namespaced_custom_object(G, V, NS, P, doc)
    assert err.value.status == 422
    assert field in err.value.body


def test_a_run_is_deleted_at_once_without_the_operator_and_a_legacy_finalizer_is_taken_off(api, operator, local_doc):
    """The operator adds no finalizer (kopf's timers added one, kopf issue 1074: a run could not be deleted
    once the operator was uninstalled); one left by an older operator is taken off at the first reconcile."""
    custom, _ = api
    doc = make_run(local_doc, "legacy")
    doc["metadata"]["finalizers"] = ["kopf.zalando.org/KopfFinalizerMarker"]
    custom.create_namespaced_custom_object(G, V, NS, P, doc)
    wait_for(lambda: not get_run(custom, "legacy")["metadata"].get("finalizers"), timeout=30, what="finalizer removed")
    custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "orphan"))
    wait_for(lambda: "orphan-base-evaluate-1" in rayjobs(custom, "orphan"))
    assert not get_run(custom, "orphan")["metadata"].get("finalizers")
    operator.kill()
    try:
        custom.delete_namespaced_custom_object(G, V, NS, P, "orphan")
        with pytest.raises(ApiException) as err:  # gone at once: nothing waits on the (absent) operator
            get_run(custom, "orphan")
        assert err.value.status == 404
    finally:
        operator.start()


def test_a_spec_edit_is_refused_with_a_condition_and_suspend_still_applies(api, operator, local_doc):
    custom, core = api
    custom.create_namespaced_custom_object(G, V, NS, P, make_run(local_doc, "edit"))
    wait_for(lambda: "edit-base-evaluate-1" in rayjobs(custom, "edit"))
    custom.patch_namespaced_custom_object(G, V, NS, P, "edit", {"spec": {"grpo": {"steps": 99}, "suspend": True}})

    def refused():
        st = get_run(custom, "edit").get("status") or {}
        cond = {c["type"]: c for c in st.get("conditions") or []}.get("SpecApplied")
        return cond and cond["status"] == "False" and st
    st = wait_for(refused, timeout=30, what="SpecApplied=False")
    cond = {c["type"]: c for c in st["conditions"]}["SpecApplied"]
    assert cond["reason"] == "EditRefused" and "spec.grpo.steps" in cond["message"]
    assert st["observedGeneration"] == 2
    cm = core.read_namespaced_config_map("edit-spec", NS)
    assert yaml.safe_load(cm.data["run.yaml"])["spec"]["grpo"]["steps"] != 99  # stages run the applied spec
    set_job(custom, "edit-base-evaluate-1", ok=True)
    st = wait_for(lambda: (get_run(custom, "edit").get("status") or {}).get("phase") == "Suspended"
                  and get_run(custom, "edit")["status"], timeout=30, what="suspended")
    assert set(rayjobs(custom, "edit")) == {"edit-base-evaluate-1"}  # suspend (mutable) took effect
    events = core.list_namespaced_event(NS, field_selector="involvedObject.name=edit").items
    assert "EditRefused" in {e.reason for e in events}
