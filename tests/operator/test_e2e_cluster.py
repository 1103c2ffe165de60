"""A PolyaRun from `kubectl apply` to Succeeded through the cluster path, every Ray pod a real container.

What runs for real: the API server (v1.20.2) with the chart `helm install`ed; the operator from its own
image (`make images`), authenticated as the chart's ServiceAccount (so the chart's RBAC is what it has);
every stage as a KubeRay RayJob whose head and worker pods are podman containers of the CPU stage image;
storage on moto's S3 server (credentials from a Secret via `cluster.envFrom`), the model a tiny Llama
uploaded there; Debian's Prometheus scraping the operator and the stage pods; the real `kubectl`.

The stand-in: KubeRay's operator (Go, not buildable here) is `tests/kuberay_standin.py`, which follows
KubeRay's documented RayJob/RayService behaviour; `kuberay_standin.NOT_EMULATED` lists what it does not
do (scheduling, resource limits, autoscaling, GPUs, Services, ...). prometheus-operator is not run either:
`tests/prometheus.py` writes out the scrape job the chart's PodMonitor stands for.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from cluster import free_ports, s3fs_client, start_s3, upload_model
from conftest import REPO, build_image, tiny_run
from kube import container_kubeconfig, service_account_token, wait_for
from kuberay_standin import KubeRayStandIn
from prometheus import PodDiscovery, dashboard_queries, stage_pods_job, start_prometheus

pytestmark = [pytest.mark.kube, pytest.mark.slow]
PODMAN = str(REPO / "tools/images/podman.sh")
NS = "e2e"
G, V, P = "polya.dev", "v1alpha1", "polyaruns"
RUN = "e2e-tiny-recipe-on-s3-with-a-forty-chars"  # the longest name the CRD admits
assert len(RUN) == 40
GRPO_STEPS = 6


def kubectl(kube: Path, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["kubectl", "--kubeconfig", str(kube), "-n", NS, *args], input=input,
                          capture_output=True, text=True, timeout=120)


class Cluster:
    """Everything one e2e session starts, stopped in reverse whatever happens."""

    def __init__(self, kube: Path, root: Path):
        self.kube, self.root = kube, root
        api = config.new_client_from_config(str(kube))
        self.api, self.custom, self.core = api, client.CustomObjectsApi(api), client.CoreV1Api(api)
        self.stack: list = []
        self.operator_name: str | None = None

    def close(self) -> None:
        for stop in reversed(self.stack):
            try:
                stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                print(f"cleanup: {exc}")

    def start_operator(self, image: str, stage_image: str, s3_env: dict[str, str], port: int) -> None:
        token = service_account_token(self.api, "polya-system", "polya-operator")
        folder = container_kubeconfig(self.kube, token)
        self.stack.append(lambda: subprocess.run(["rm", "-rf", str(folder)]))
        self.operator_name = f"polya-e2e-operator-{port}"
        env = {"KUBECONFIG": "/kube/config", "POLYA_IMAGE": stage_image, "POLYA_OPERATOR_TIMER_S": "2",
               "POLYA_OPERATOR_BACKOFF_S": "2", "POLYA_STAGE_METRICS_LINGER_S": "3", **s3_env}
        args = [PODMAN, "run", "-d", "--name", self.operator_name, "--network", "host", "--read-only",
                "--tmpfs", "/tmp", "-v", f"{folder}:/kube:ro"]
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        args += [image, "--namespace", NS, "--metrics-host", "127.0.0.1", "--metrics-port", str(port),
                 "--liveness", f"http://127.0.0.1:{port + 1}/healthz"]
        out = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.stack.append(self.stop_operator)

    def stop_operator(self) -> None:
        if self.operator_name:
            logs = subprocess.run([PODMAN, "logs", self.operator_name], capture_output=True, text=True)
            (self.root / "operator.log").write_text(logs.stdout + logs.stderr)
            subprocess.run([PODMAN, "rm", "-f", "-t", "5", self.operator_name], capture_output=True)
            self.operator_name = None

    def run(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(G, V, NS, P, name)

    def rayjobs(self, name: str) -> dict[str, dict]:
        items = self.custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayjobs",
                                                          label_selector=f"polya.dev/run={name}")["items"]
        return {j["metadata"]["name"]: j for j in items}

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(NS, label_selector=f"polya.dev/run={name}").items


@pytest.fixture(scope="module")
def images() -> tuple[str, str]:
    return build_image("stage-cpu"), build_image("operator")


@pytest.fixture(scope="module")
def e2e(kube, images, tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    stage_image, operator_image = images
    c = Cluster(kube, root)
    try:
        c.core.create_namespace({"metadata": {"name": NS}})
        c.stack.append(lambda: c.core.delete_namespace(NS))
        s3 = start_s3(root / "s3")
        c.stack.append(s3.stop)
        c.s3 = s3
        c.bucket = s3.make_bucket("polya-e2e")
        upload_model(s3, tiny_model, f"{c.bucket}/models/tiny")
        c.core.create_namespaced_secret(NS, {"metadata": {"name": "s3"}, "stringData": s3.env()})
        op_port = free_ports(1)[0]
        (root / "prometheus").mkdir()
        c.discovery = PodDiscovery(kube, root / "prometheus").start()
        c.stack.append(c.discovery.stop)
        c.prometheus = start_prometheus(root / "prometheus", [
            {"job_name": "polya-operator", "static_configs": [{"targets": [f"127.0.0.1:{op_port}"]}]},
            stage_pods_job(c.discovery)])
        c.stack.append(c.prometheus.stop)
        c.standin = KubeRayStandIn(kube, PODMAN, root / "kuberay", namespaces=[NS], ttl_cap_s=0).start()
        c.stack.append(c.standin.stop)
        c.start_operator(operator_image, stage_image, s3.env(), op_port)
        yield c
    finally:
        c.close()


def spec_doc(e2e: Cluster, name: str, storage: str) -> dict:
    doc = tiny_run(Path("/placeholder"), Path("/placeholder"), grpo_steps=GRPO_STEPS)
    doc["metadata"] = {"name": name, "namespace": NS}
    spec = doc["spec"]
    spec["model"]["name"] = f"{e2e.bucket}/models/tiny"
    spec["storage"]["uri"] = f"{e2e.bucket}/{storage}"
    spec["maxStageRetries"] = 1
    spec["cluster"] = {"cpusPerWorker": 2, "memoryPerWorker": "4Gi", "headCpu": "1", "headMemory": "2Gi",
                       "envFrom": [{"secretRef": {"name": "s3"}}],
                       "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}]}
    return doc


def _gone(e2e: Cluster, name: str) -> bool:
    try:
        e2e.run(name)
    except ApiException as exc:
        return exc.status == 404
    return False


def _phase(e2e: Cluster, name: str) -> str | None:
    return (e2e.run(name).get("status") or {}).get("phase")


def _kill_grpo_worker_after_first_checkpoint(e2e: Cluster, fs, state: dict) -> None:
    """Once attempt 1 of the GRPO RayJob has a complete step checkpoint in S3, kill its worker container
    (learner and rollout replica): the Ray job fails, KubeRay marks the RayJob Failed, the operator retries."""
    if state.get("killed"):
        return
    job = next((n for n, j in e2e.rayjobs(RUN).items()
                if j["metadata"]["labels"]["polya.dev/step"] == "polya.grpo"
                and j["metadata"]["labels"]["polya.dev/attempt"] == "1"), None)
    if job is None:
        return
    done = fs.glob(f"{e2e.bucket[len('s3://'):]}/run/checkpoints/grpo/*/step_*/polya_state.json")
    workers = e2e.standin.containers(job, NS)["workers"]
    if done and workers:
        subprocess.run([PODMAN, "kill", workers[0]], capture_output=True, timeout=60)
        state.update(killed=workers[0], at_checkpoints=sorted(p.split("/")[-2] for p in done), job=job)


def test_a_polya_run_reaches_succeeded_with_every_stage_in_containers(e2e: Cluster, kube):
    t0 = time.time()
    doc = spec_doc(e2e, RUN, "run")
    applied = kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert applied.returncode == 0 and "created" in applied.stdout, applied.stderr
    fs = s3fs_client(e2e.s3)
    seen_pods: dict[str, str] = {}
    kill: dict = {}
    deadline = time.time() + 1800
    while time.time() < deadline:
        phase = _phase(e2e, RUN)
        if phase in ("Succeeded", "Failed"):
            break
        for pod in e2e.pods(RUN):
            seen_pods[pod.metadata.name] = pod.status.phase if pod.status else None
        _kill_grpo_worker_after_first_checkpoint(e2e, fs, kill)
        time.sleep(1)
    wall = time.time() - t0
    status = e2e.run(RUN)["status"]
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)[-4000:]
    print(f"e2e run: {wall:.0f} s wall to Succeeded")

    # kubectl shows it; every stage has its figures, read by the operator from S3
    table = kubectl(kube, "get", "prun", RUN)
    assert table.returncode == 0 and "Succeeded" in table.stdout.splitlines()[1], table.stdout
    stages = {s["name"]: s for s in status["stages"]}
    assert len(stages) == 7 and all(s["phase"] == "Succeeded" for s in stages.values())
    assert all(s.get("figures") and s["artifactUri"].startswith(f"{e2e.bucket}/run/") for s in stages.values()), stages
    # every file each manifest lists is in S3 at its size (writers on different pods pushed parts of some)
    for st in stages.values():
        path = st["artifactUri"][len("s3://"):]
        manifest = json.loads(fs.cat_file(f"{path}/manifest.json"))
        assert manifest["files"] and all(fs.size(f"{path}/{rel}") == info["size"]
                                         for rel, info in manifest["files"].items()), st["name"]
    # every stage ran in containers: Pod objects of each RayJob were Running while it ran, then went away
    assert seen_pods and "Running" in seen_pods.values()
    jobs = e2e.rayjobs(RUN)
    assert all(len(n) <= 47 for n in jobs), list(jobs)
    wait_for(lambda: not e2e.pods(RUN), timeout=60, what="the stage pods to go after their jobs")

    # the worker was killed mid-GRPO; the retry resumed from the checkpoint in S3
    assert kill.get("killed"), "the GRPO worker was never killed (no checkpoint seen while attempt 1 ran)"
    assert stages["polya/grpo"]["attempts"] == 2, stages["polya/grpo"]
    first = jobs[kill["job"]]["status"]
    assert first["jobDeploymentStatus"] == "Failed" and first["jobStatus"] == "FAILED", first
    rows = json.loads(fs.cat_file(stages["polya/grpo"]["artifactUri"][len("s3://"):] + "/steps.json"))
    assert [r["step"] for r in rows] == list(range(1, GRPO_STEPS + 1))
    resumed = [r for r in rows if r["resumed_from"] > 0]
    assert resumed and resumed[0]["step"] == resumed[0]["resumed_from"] + 1 > 1, rows
    retry_log = e2e.standin.job_logs(stages["polya/grpo"]["rayJobName"], NS)
    assert f"grpo: resumed from the step-{resumed[0]['resumed_from']} checkpoint in s3://" in retry_log, retry_log[-3000:]

    # the report, written by the last stage, is in the bucket
    assert fs.exists(f"{e2e.bucket[len('s3://'):]}/run/report/report.md")
    e2e.window = (t0, time.time())


def test_the_same_run_under_a_new_name_reuses_every_stage_and_serves_the_final_model(e2e: Cluster, kube):
    name = "e2e-again"
    doc = spec_doc(e2e, name, "run")
    doc["spec"]["evaluation"]["serve"] = True  # not part of any stage's cache key
    assert kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(doc)).returncode == 0
    status = wait_for(lambda: _phase(e2e, name) == "Succeeded" and e2e.run(name)["status"], timeout=120,
                      interval=1, what="the cached run to succeed")
    assert all(s["message"] == "reused from storage (no RayJob)" for s in status["stages"]), status["stages"]
    assert e2e.rayjobs(name) == {}  # no RayJob ran a stage whose manifest exists
    original = {s["name"]: s["artifactUri"] for s in e2e.run(RUN)["status"]["stages"]}
    assert {s["name"]: s["artifactUri"] for s in status["stages"]} == original

    svc = wait_for(lambda: next(iter(e2e.custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayservices")[
        "items"]), None), timeout=60, what="RayService")
    assert svc["metadata"]["name"] == f"{name}-serve"
    apps = {a["name"]: a for a in yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]}
    assert apps["rollout"]["args"]["model"] == original["polya/grpo"] + "/model"  # the trained model

    def running():
        st = e2e.custom.get_namespaced_custom_object("ray.io", "v1", NS, "rayservices", f"{name}-serve").get("status")
        return (st or {}).get("serviceStatus") == "Running" and st
    wait_for(running, timeout=600, interval=2, what="the RayService's apps to run")
    import openai

    api = openai.OpenAI(base_url=e2e.standin.serve_url(f"{name}-serve", NS) + "/v1", api_key="none")
    out = api.completions.create(model=name, prompt="1 + 1 =", max_tokens=4, temperature=0)
    assert out.choices[0].text is not None and out.usage.completion_tokens >= 1

    # deleting the run takes its RayService, pods and containers with it (owner references, GC)
    t0 = time.time()
    assert kubectl(kube, "delete", "prun", name, "--wait=false").returncode == 0
    wait_for(lambda: not e2e.custom.list_namespaced_custom_object("ray.io", "v1", NS, "rayservices")["items"]
             and not e2e.standin.containers(f"{name}-serve", NS)["head"], timeout=60, interval=1,
             what="the RayService and its containers to go")
    print(f"RayService gone {time.time() - t0:.0f} s after the run's deletion")


def test_a_sweep_over_the_finished_runs_spec_reuses_its_stages_and_exports_progress(e2e: Cluster, kube):
    """A PolyaSweep (one arm, seed 0) whose template is the finished run's spec, its store the run's: the operator
    (under the chart's RBAC) creates the child PolyaRun it owns, the child reuses every stage from the shared
    store, the sweep aggregates to Succeeded, and Prometheus scrapes the sweep's progress from the operator."""
    name, arm = "e2e-sweep", "same"
    child = f"{name}-{arm}-s0"
    template = spec_doc(e2e, "unused", "run")["spec"]
    doc = {"apiVersion": f"{G}/{V}", "kind": "PolyaSweep", "metadata": {"name": name, "namespace": NS},
           "spec": {"template": template, "arms": [{"name": arm}], "seeds": [0]}}
    out = kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(doc))
    assert out.returncode == 0, out.stderr
    sweep = wait_for(lambda: (lambda o: o if (o.get("status") or {}).get("phase") == "Succeeded" else None)(
        e2e.custom.get_namespaced_custom_object(G, V, NS, "polyasweeps", name)), timeout=180, interval=1,
        what="the sweep to succeed")
    assert sweep["status"]["succeeded"] == sweep["status"]["total"] == 1, sweep["status"]
    run = e2e.run(child)
    assert [(o["kind"], o["name"], o.get("controller")) for o in run["metadata"]["ownerReferences"]] == [
        ("PolyaSweep", name, True)]
    storage = run["spec"]["storage"]
    assert (storage["uri"], storage["artifacts"]) == (f"{e2e.bucket}/run/runs/{child}", f"{e2e.bucket}/run")
    stages = run["status"]["stages"]
    assert stages and all(s["message"] == "reused from storage (no RayJob)" for s in stages), stages
    assert e2e.rayjobs(child) == {}
    original = {s["name"]: s["artifactUri"] for s in e2e.run(RUN)["status"]["stages"]}
    assert {s["name"]: s["artifactUri"] for s in stages} == original

    def scraped():
        now = time.time()
        series = e2e.prometheus.query_range(f'polya_operator_sweep_progress_ratio{{namespace="{NS}",sweep="{name}"}}',
                                            now - 30, now)
        return series and float(series[0]["values"][-1][1]) == 1.0
    wait_for(scraped, timeout=30, interval=1, what="Prometheus to scrape the sweep's progress (1.0)")


def test_deleting_a_running_run_without_the_operator_removes_its_rayjobs_and_pods(e2e: Cluster, kube):
    """As after `helm uninstall`: no operator runs, no finalizer waits on it; garbage collection and KubeRay
    remove the RayJob, its pods and its containers."""
    name = "e2e-deleted"
    assert kubectl(kube, "apply", "-f", "-", input=yaml.safe_dump(spec_doc(e2e, name, "deleted"))).returncode == 0
    job = wait_for(lambda: next(iter(e2e.rayjobs(name)), None), timeout=60, what="the first RayJob")
    wait_for(lambda: any(p.status and p.status.phase == "Running" for p in e2e.pods(name)), timeout=180,
             what="its pods to run")
    e2e.stop_operator()
    t0 = time.time()
    assert kubectl(kube, "delete", "prun", name, "--wait=false").returncode == 0
    wait_for(lambda: _gone(e2e, name), timeout=5, what="the run to be deleted at once (no finalizer)")
    wait_for(lambda: not e2e.rayjobs(name) and not e2e.pods(name) and not e2e.standin.containers(job, NS)["head"],
             timeout=60, interval=1, what="RayJobs, pods and containers to go")
    print(f"run deleted: its RayJob, pods and containers gone in {time.time() - t0:.0f} s")


def test_every_dashboard_query_returns_data_from_prometheus(e2e: Cluster):
    """Each panel query of the chart's Grafana dashboard, evaluated as Grafana does (a range query over
    the window of the e2e run), returns series scraped from the operator and the stage pods."""
    start, end = getattr(e2e, "window", (time.time() - 3600, time.time()))
    rows = []
    for title, expr in dashboard_queries():
        result = e2e.prometheus.query_range(expr, start, time.time())
        values = [float(v) for series in result for _, v in series["values"]]
        finite = [v for v in values if v == v and abs(v) != float("inf")]
        rows.append((title, expr, len(result), finite))
    for title, expr, n, finite in rows:
        print(f"{n:3d} series, max {max(finite, default=float('nan')):.4g} | {title} | {expr}")
    # data, not just series: primed series (NaN quantiles, zero rates) would otherwise count as answers
    assert all(n > 0 and finite for _, _, n, finite in rows), [r[:3] for r in rows if not (r[2] and r[3])]
    by_expr = {expr: finite for _, expr, _, finite in rows}
    errors = next(e for e in by_expr if "reconcile_errors" in e)
    assert max(by_expr[errors]) == 0  # the operator never failed a reconcile during the run
    assert max(by_expr[next(e for e in by_expr if "polya_tokens_generated_total" in e)]) > 0
    assert max(by_expr[next(e for e in by_expr if "stage_duration_seconds_bucket" in e)]) > 0
    assert e2e.discovery.seen  # the stage pods were found the way the PodMonitor selects them
    # GRPO's gauges moved while the stage ran (one value per step), not only at its end
    steps = e2e.prometheus.query_range("polya_grpo_step", start, end)
    values = {float(v) for series in steps for _, v in series["values"]}
    assert len(values) >= 3, values
