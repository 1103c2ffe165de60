"""The operator from its own image: `make images` builds it (tools/images/build.sh, podman), a container of
it runs against the real local API server and turns an applied PolyaRun into its first RayJob.

The container runs as the image's non-root user with a read-only root filesystem (as the chart's
Deployment runs it) on the host network (only loopback is reachable here). No kubelet runs, so the RayJob
is not executed: KubeRay is not emulated in this test."""
from __future__ import annotations

import copy
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, config

from conftest import REPO, build_image
from kube import container_kubeconfig, wait_for

pytestmark = [pytest.mark.kube, pytest.mark.slow]
PODMAN = str(REPO / "tools/images/podman.sh")


@pytest.fixture(scope="module")
def operator_image() -> str:
    return build_image("operator")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_operator_container_creates_the_first_rayjob(kube, operator_image, local_doc):
    api = config.new_client_from_config(str(kube))
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    ns, port = "operator-image", _free_port()
    core.create_namespace({"metadata": {"name": ns}})
    folder = container_kubeconfig(kube)
    name = f"polya-operator-test-{port}"
    started = subprocess.run(
        [PODMAN, "run", "-d", "--rm", "--name", name, "--network", "host", "--read-only", "--tmpfs", "/tmp",
         "-v", f"{folder}:/kube:ro", "-e", "KUBECONFIG=/kube/config", "-e", "POLYA_OPERATOR_TIMER_S=1",
         "-e", "POLYA_IMAGE=localhost/polya-stage:test", "-e", "POLYA_GPU_RESOURCE=example.com/gpu",
         operator_image, "--namespace", ns, "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
         "--liveness", f"http://127.0.0.1:{port + 1}/healthz"], capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stderr
    try:
        user = subprocess.run([PODMAN, "inspect", name, "--format", "{{.Config.User}}"], capture_output=True, text=True)
        assert user.stdout.strip() == "65532:65532"
        run = copy.deepcopy(local_doc)
        run["metadata"] = {"name": "from-image", "namespace": ns}
        run["spec"]["evaluation"]["gpusPerReplica"] = 1
        custom.create_namespaced_custom_object("polya.dev", "v1alpha1", ns, "polyaruns", run)
        job = wait_for(lambda: next(iter(custom.list_namespaced_custom_object(
            "ray.io", "v1", ns, "rayjobs")["items"]), None), timeout=180, what="the first RayJob")
        assert job["metadata"]["name"] == "from-image-base-evaluate-1"
        assert job["spec"]["entrypoint"] == "polya stage evaluate --spec /etc/polya/run.yaml --arm base"
        worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
        assert worker["image"] == "localhost/polya-stage:test" and worker["resources"]["limits"]["example.com/gpu"] == 1
        status = wait_for(lambda: custom.get_namespaced_custom_object("polya.dev", "v1alpha1", ns, "polyaruns",
                                                                      "from-image").get("status"), what="status")
        assert status["phase"] == "Running" and status["currentStage"] == "base/evaluate"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert b"polya_operator_runs" in r.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 1}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        logs = subprocess.run([PODMAN, "logs", name], capture_output=True, text=True)
        subprocess.run([PODMAN, "rm", "-f", name], capture_output=True)
        core.delete_namespace(ns)
        shutil.rmtree(folder, ignore_errors=True)
        print(logs.stdout[-3000:], logs.stderr[-3000:])
