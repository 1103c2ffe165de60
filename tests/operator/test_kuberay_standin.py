"""The KubeRay stand-in (tests/kuberay_standin.py) on the real local API server with the CPU stage image:
hand-written RayJobs run as podman containers (a head with 0 CPUs and one 1-CPU worker), and their status
follows KubeRay's state machine. Four RayJobs at once: one that succeeds (a task on the worker, a file of a
mounted ConfigMap, an env var from a Secret via envFrom), one whose name is too long (ValidationFailed), one
created suspended (Suspended, nothing runs), then admitted, whose entrypoint exits 3 (FAILED/Failed); and
one past its activeDeadlineSeconds while its cluster starts (Failed/DeadlineExceeded)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time

import pytest
from kubernetes import client, config

from conftest import REPO, build_image
from kube import wait_for
from kuberay_standin import MAX_RAYJOB_NAME_LENGTH, NOT_EMULATED, KubeRayStandIn

pytestmark = [pytest.mark.kube, pytest.mark.slow]
PODMAN = str(REPO / "tools/images/podman.sh")
NS = "kuberay-standin"

DRIVER = """
import os, ray
ray.init()

@ray.remote(num_cpus=1)
def where():
    return os.environ["RAY_CLOUD_INSTANCE_ID"]

print("TASK_ON", ray.get(where.remote()))
print("CONFIG", open("/etc/standin/greeting.txt").read().strip())
print("SECRET", os.environ["STANDIN_TOKEN"])
"""


@pytest.fixture(scope="module")
def stage_image() -> str:
    return os.environ.get("POLYA_STANDIN_IMAGE") or build_image("stage-cpu")


@pytest.fixture(scope="module")
def standin(kube, stage_image, tmp_path_factory):
    api = config.new_client_from_config(str(kube))
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": NS}})
    core.create_namespaced_secret(NS, {"metadata": {"name": "creds"}, "stringData": {"STANDIN_TOKEN": "s3cr3t"}})
    core.create_namespaced_config_map(NS, {"metadata": {"name": "job-files"}, "data": {"greeting.txt": "hello\n"}})
    kr = KubeRayStandIn(kube, PODMAN, tmp_path_factory.mktemp("kuberay"), namespaces=[NS], ttl_cap_s=0)
    with kr:
        yield kr
    left = subprocess.run([PODMAN, "ps", "-a", "--filter", f"label={kr.LABEL}={kr.id}", "-q"],
                          capture_output=True, text=True)
    assert left.stdout.strip() == "", "containers left behind"
    core.delete_namespace(NS)


def node(image: str, cpu: str, params: dict, with_files: bool) -> dict:
    container = {"name": "ray", "image": image,
                 "resources": {"requests": {"cpu": cpu, "memory": "2Gi"}, "limits": {"cpu": cpu, "memory": "2Gi"}}}
    pod: dict = {"containers": [container]}
    if with_files:
        container["envFrom"] = [{"secretRef": {"name": "creds"}}]
        container["volumeMounts"] = [{"name": "files", "mountPath": "/etc/standin", "readOnly": True}]
        pod["volumes"] = [{"name": "files", "configMap": {"name": "job-files"}}]
    return {"rayStartParams": params, "template": {"spec": pod}}


def rayjob(name: str, image: str, entrypoint: str, workers: int = 1, suspend: bool = False) -> dict:
    worker = node(image, "1", {}, True)
    worker.update(groupName="cpu", replicas=workers, minReplicas=workers, maxReplicas=workers)
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name, "namespace": NS},
            "spec": {"entrypoint": entrypoint, "shutdownAfterJobFinishes": True, "ttlSecondsAfterFinished": 0,
                     "backoffLimit": 0, "suspend": suspend,
                     "rayClusterSpec": {"rayVersion": "2.60.0",
                                        "headGroupSpec": node(image, "2", {"num-cpus": "0",
                                                                           "dashboard-host": "0.0.0.0"}, True),
                                        "workerGroupSpecs": [worker] if workers else []}}}


def test_rayjobs_run_as_kuberay_runs_them(kube, standin, stage_image):
    t0 = time.monotonic()
    api = config.new_client_from_config(str(kube))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def get(name):
        return custom.get_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", name)

    def status(name):
        return get(name).get("status") or {}

    def create(body):
        custom.create_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", body)

    assert any("autoscaling" in line for line in NOT_EMULATED)
    create(rayjob("standin-ok", stage_image, "python -c " + shlex.quote(DRIVER)))
    create(rayjob("standin-fail", stage_image, "python -c 'raise SystemExit(3)'", workers=0, suspend=True))
    long_name = "x" * (MAX_RAYJOB_NAME_LENGTH + 1)
    assert len(long_name) == 48
    create(rayjob(long_name, stage_image, "true"))
    late = rayjob("standin-deadline", stage_image, "sleep 60", workers=0)
    late["spec"]["activeDeadlineSeconds"] = 3
    create(late)

    # too long a name: ValidationFailed, worded as KubeRay's, nothing runs
    st = wait_for(lambda: status(long_name).get("jobDeploymentStatus") == "ValidationFailed" and status(long_name),
                  timeout=30, what="ValidationFailed")
    assert st["reason"] == "ValidationFailed"
    assert st["message"] == "The RayJob metadata is invalid: RayJob name should be no more than 47 characters"
    # created suspended: New -> Initializing -> Suspending -> Suspended, ids cleared, no pods
    st = wait_for(lambda: status("standin-fail").get("jobDeploymentStatus") == "Suspended" and status("standin-fail"),
                  timeout=30, what="Suspended")
    assert not st.get("jobId") and not st.get("rayClusterName") and not st.get("jobStatus")  # omitempty: absent
    assert standin.containers("standin-fail")["head"] is None
    # admitted (as Kueue does): it runs
    custom.patch_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", "standin-fail", {"spec": {"suspend": False}})

    # the good job: Initializing with ids, then Running with its pods Running
    st = wait_for(lambda: status("standin-ok").get("rayClusterName") and status("standin-ok"), timeout=30)
    cluster = st["rayClusterName"]
    assert re.fullmatch(r"standin-ok-[bcdfghjklmnpqrstvwxz2456789]{5}", cluster)
    assert re.fullmatch(r"standin-ok-[bcdfghjklmnpqrstvwxz2456789]{5}", st["jobId"]) and st["startTime"]
    assert get("standin-ok")["metadata"]["finalizers"] == ["ray.io/rayjob-finalizer"]
    st = wait_for(lambda: status("standin-ok").get("jobDeploymentStatus") == "Running" and status("standin-ok"),
                  timeout=150, interval=1, what="Running")
    assert st["dashboardURL"].startswith("127.0.0.1:") and st["rayClusterStatus"]["state"] == "ready"
    pods = core.list_namespaced_pod(NS, label_selector=f"ray.io/cluster={cluster}").items
    assert {p.metadata.labels["ray.io/node-type"] for p in pods} == {"head", "worker"}
    for p in pods:
        assert p.status.phase == "Running" and p.metadata.labels["ray.io/is-ray-node"] == "yes"
        assert p.spec.node_name is None and p.metadata.owner_references[0].kind == "RayCluster"
        kind = p.metadata.labels["ray.io/node-type"]
        assert re.fullmatch(rf"{cluster}-(head|cpu-worker)-[a-z0-9]{{5}}", p.metadata.name)
        assert p.metadata.labels["ray.io/group"] == ("headgroup" if kind == "head" else "cpu")
    head_cmd = next(p for p in pods if p.metadata.labels["ray.io/node-type"] == "head").spec.containers[0]
    assert head_cmd.command == ["/bin/bash", "-c", "--"] and "ray start --head" in head_cmd.args[0]
    assert " --num-cpus=0 " in head_cmd.args[0] and " --block " in head_cmd.args[0]
    found = standin.containers("standin-ok")
    assert found["head"] and len(found["workers"]) == 1 and found["cluster"] == cluster
    worker_pod = found["pods"][found["workers"][0]]
    rc = custom.get_namespaced_custom_object("ray.io", "v1", NS, "rayclusters", cluster)
    assert rc["metadata"]["ownerReferences"][0]["name"] == "standin-ok"

    # both finish as KubeRay reports them
    ok = wait_for(lambda: status("standin-ok").get("jobDeploymentStatus") in ("Complete", "Failed")
                  and status("standin-ok"), timeout=120, interval=1, what="standin-ok to finish")
    logs = standin.job_logs("standin-ok")
    assert ok["jobStatus"] == "SUCCEEDED" and ok["jobDeploymentStatus"] == "Complete", (ok, logs)
    assert ok["endTime"] >= ok["startTime"] and ok["rayClusterName"] == cluster and ok["succeeded"] == 1
    assert f"TASK_ON {worker_pod}" in logs and "CONFIG hello" in logs and "SECRET s3cr3t" in logs
    bad = wait_for(lambda: status("standin-fail").get("jobDeploymentStatus") in ("Complete", "Failed")
                   and status("standin-fail"), timeout=120, interval=1, what="standin-fail to finish")
    assert bad["jobStatus"] == "FAILED" and bad["jobDeploymentStatus"] == "Failed" and bad["reason"] == "AppFailed"
    assert "exit code 3" in bad["message"] and bad["failed"] == 1
    late = status("standin-deadline")
    assert late["jobDeploymentStatus"] == "Failed" and late["reason"] == "DeadlineExceeded"
    assert re.fullmatch(r"The RayJob has passed the activeDeadlineSeconds\. StartTime: \d{4}-\d\d-\d\d "
                        r"\d\d:\d\d:\d\d \+0000 UTC\. ActiveDeadlineSeconds: 3", late["message"])
    head_log = standin.logs(found["head"])
    assert "ray start" in head_log or "Ray runtime started" in head_log, head_log[-2000:]

    # shutdownAfterJobFinishes (TTL 0): containers, Pod objects and the RayCluster go; the RayJob stays
    wait_for(lambda: not core.list_namespaced_pod(NS, label_selector=f"ray.io/cluster={cluster}").items,
             timeout=30, what="pods deleted")
    wait_for(lambda: not custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayclusters")["items"],
             timeout=30, what="RayClusters deleted")
    ps = subprocess.run([PODMAN, "ps", "-a", "--filter", f"label=kuberay-standin={standin.id}", "-q"],
                        capture_output=True, text=True)
    assert ps.stdout.strip() == ""
    assert get("standin-ok")["status"]["jobDeploymentStatus"] == "Complete"

    # deleting a RayJob: the finalizer is removed, the object goes
    custom.delete_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", "standin-ok")
    wait_for(lambda: "standin-ok" not in {j["metadata"]["name"] for j in custom.list_namespaced_custom_object(
        "ray.io", "v1", NS, "rayjobs")["items"]}, timeout=30, what="RayJob deleted")
    print(f"stand-in test body: {time.monotonic() - t0:.0f} s")


def test_a_dead_worker_is_replaced(kube, standin, stage_image):
    """The RayCluster controller replaces a worker pod whose container died: a new Pod object and container
    (same ports) join the cluster; the driver (a sleep on the head) is not disturbed."""
    api = config.new_client_from_config(str(kube))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)

    def status():
        return custom.get_namespaced_custom_object("ray.io", "v1", NS, "rayjobs", "standin-worker").get("status") or {}

    custom.create_namespaced_custom_object("ray.io", "v1", NS, "rayjobs",
                                           rayjob("standin-worker", stage_image, "sleep 30"))
    wait_for(lambda: status().get("jobStatus") == "RUNNING", timeout=150, interval=1, what="RUNNING")
    before = standin.containers("standin-worker")
    (old,) = before["workers"]
    subprocess.run([PODMAN, "kill", old], capture_output=True, check=True)
    after = wait_for(lambda: (c := standin.containers("standin-worker"))["workers"] and c["workers"][0] != old and c,
                     timeout=30, what="a replacement worker")
    new_pod, old_pod = after["pods"][after["workers"][0]], before["pods"][old]
    assert new_pod != old_pod and new_pod.startswith(f"{before['cluster']}-cpu-worker-")
    wait_for(lambda: old_pod not in {p.metadata.name for p in core.list_namespaced_pod(NS).items}, timeout=30)
    wait_for(lambda: status().get("rayClusterStatus", {}).get("readyWorkerReplicas") == 1, timeout=60, interval=1,
             what="the replacement to be ready")
    done = wait_for(lambda: status().get("jobDeploymentStatus") in ("Complete", "Failed") and status(),
                    timeout=90, interval=1, what="the job to finish")
    assert done["jobStatus"] == "SUCCEEDED", done
