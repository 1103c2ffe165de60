"""A KubeRay stand-in for tests: runs RayJob and RayService objects of a real (local) kube-apiserver as
podman containers, the way KubeRay's operator + a kubelet would, and reports on them as KubeRay does.

KubeRay's operator (Go) cannot run here and no kubelet runs (tests/kube.py). `KubeRayStandIn` watches the
API server (a ~1 s poll, all namespaces or the given ones) and, following KubeRay's sources
(ray-project/kuberay: ray-operator/controllers/ray/rayjob_controller.go, common/pod.go, utils/validation.go,
utils/constant.go, apis/ray/v1/rayjob_types.go and rayservice_types.go):

RayJob (ray.io/v1), the state machine of rayjob_controller.go:
- validation first (ValidateRayJobMetadata/Spec): a name over 47 characters (MaxRayJobNameLength = 53 - 6)
  or not a DNS-1035 label, suspend without shutdownAfterJobFinishes, a negative TTL or a TTL without
  shutdownAfterJobFinishes, no rayClusterSpec, bad runtimeEnvYAML, activeDeadlineSeconds <= 0, backoffLimit
  < 0 -> `jobDeploymentStatus: ValidationFailed`, `reason: ValidationFailed`, `message` worded as KubeRay's;
  nothing runs.
- New -> Initializing: adds the `ray.io/rayjob-finalizer` finalizer, sets `jobId` (spec.jobId or
  `<rayjob>-<5 random>`), `rayClusterName` (`<rayjob>-<5 random>`, k8s rand.String's alphabet),
  `jobStatus: ""` (JobStatusNew), `startTime`.
- Initializing: `suspend: true` -> Suspending -> Suspended (so a job created suspended ends `Suspended`
  with jobId/rayClusterName cleared and nothing started, exactly as KubeRay); `suspend: false` again ->
  New -> a fresh cluster (how Kueue admits a job). activeDeadlineSeconds past startTime -> Failed,
  `reason: DeadlineExceeded`, KubeRay's message. Otherwise it creates a RayCluster object (owned by the
  RayJob, labels ray.io/originated-from-cr-name / -crd) and its pods: Pod objects named as KubeRay names
  them (generateName `<cluster>-head-` / `<cluster>-<group>-worker-`, labels ray.io/cluster, node-type,
  group, is-ray-node, identifier, app.kubernetes.io/*; owned by the RayCluster; no nodeName), each run as a
  podman container; once every pod passes KubeRay's readiness checks (the dashboard agent's
  /api/local_raylet_healthz, plus the dashboard's /api/gcs_healthz on the head) the RayCluster is `ready`,
  `dashboardURL` is set and the job goes Running.
- Running: the Ray job is looked up (GET /api/jobs/<jobId>) and, when Ray does not know it, submitted
  (POST /api/jobs/ with entrypoint, submission_id = jobId, runtime_env = runtimeEnvYAML parsed,
  entrypoint_num_cpus/gpus/resources, metadata): KubeRay's HTTPMode request, sent from the test process.
  The driver runs on the head container, as with KubeRay. `jobStatus` (PENDING/RUNNING/...), `message`,
  `rayJobInfo.startTime/endTime` mirror Ray's job info; a terminal Ray status gives Complete (or Failed with
  `reason: AppFailed` for FAILED) and `endTime`, `succeeded`/`failed` counts. Ray's job logs are saved under
  `workdir/logs/<ns>/<rayjob>/job-<jobId>.log` (`job_logs()`); status carries only Ray's message.
- Complete/Failed with shutdownAfterJobFinishes: after `endTime + ttlSecondsAfterFinished` the RayCluster
  (containers, Pod objects, RayCluster object) is deleted -- KubeRay deletes the RayJob itself only when
  its operator runs with DELETE_RAYJOB_CR_AFTER_JOB_FINISHES=true (`delete_rayjob_after_finish=True` here).
  `ttl_cap_s` caps the wait (Polya's operator sets 600 s; tests pass a small cap).
- backoffLimit > 0: Failed (except DeadlineExceeded) with `failed < backoffLimit + 1` -> Retrying -> the
  cluster is deleted -> New -> a new cluster and job id, as checkBackoffLimitAndUpdateStatusIfNeeded.
- the head container exits while Initializing/Running -> Failed, `reason: AppFailed`, a message saying the
  Ray head is gone (KubeRay itself would wait for the kubelet to restart the head; see NOT_EMULATED).
  A worker container that exits is replaced, as the RayCluster controller replaces a dead worker pod: the
  old Pod object is marked Failed and deleted, a new pod + container starts with the same ports; whether
  the Ray job survives is Ray's business.
- RayJob deleted (or deletionTimestamp set): a non-terminal Ray job is stopped (POST /api/jobs/<id>/stop),
  its containers, Pod objects and RayCluster are removed, the finalizer is removed (within a poll or two).

RayService (ray.io/v1): a cluster `<rayservice>-<5 random>` from spec.rayClusterConfig the same way
(`pendingServiceStatus.rayClusterName` while it starts); once ready, spec.serveConfigV2 (YAML) is deployed
with PUT /api/serve/applications/ and GET /api/serve/applications/ is mirrored into
`activeServiceStatus.applicationStatuses.<app>.{status,message,serveDeploymentStatuses}`; when every app
is RUNNING: `serviceStatus: Running`, `numServeEndpoints` (healthy Serve proxies), and the `Ready`
condition True/NonZeroServeEndpoints (False/Initializing before) that KubeRay >= 1.3 writes; the cluster
moves from pendingServiceStatus to activeServiceStatus. A changed serveConfigV2 is redeployed. Deleting
the RayService removes everything. `serve_url(name)` gives the Serve HTTP address.

Containers: `podman run -d --network host --shm-size ...` (only loopback works here), the pod template's
first container: its image, KubeRay's command (`/bin/bash -c -- "ulimit -n 65536; ray start ..."`, or the
template's command/args `&&`-chained before it, or left alone when it already says `ray start`), env
(`env` with $(VAR) expansion and valueFrom fieldRef/secretKeyRef/configMapKeyRef/resourceFieldRef,
`envFrom` Secrets (base64-decoded) and ConfigMaps read from the API server) plus what KubeRay injects
(RAY_CLUSTER_NAME, RAY_CLOUD_INSTANCE_ID, RAY_NODE_TYPE_NAME, KUBERAY_GEN_RAY_START_CMD, RAY_PORT,
RAY_ADDRESS, RAY_USAGE_STATS_KUBERAY_IN_USE, RAY_USAGE_STATS_EXTRA_TAGS (head),
RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE, FQ_RAY_IP/RAY_IP (workers), the RayService timeouts), HOME=/home/ray
unless set; ConfigMap/Secret volumes written into a per-pod folder under workdir (items or all keys as
files) and mounted read-only at the volumeMounts' mountPaths (subPath supported); emptyDir a fresh folder
per pod; hostPath as is; a persistentVolumeClaim a folder per claim shared by all pods (like an RWX volume);
workingDir; runAsUser/runAsGroup. Each pod has its own filesystem (its own container).

`ray start` is built as KubeRay's generateRayStartCommand (sorted `--key=value`, "true" -> `--key`,
num-cpus from the CPU limit else request (rounded up), memory from the memory limit, num-gpus from a
`*gpu` limit, --block, dashboard-host 0.0.0.0 on the head), plus ADDED_RAY_START_FLAGS.
"""
from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import logging
import math
import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

try:  # tests/ is on sys.path under pytest; make the import work from anywhere else too
    from cluster import free_ports
except ImportError:  # pragma: no cover
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from cluster import free_ports

log = logging.getLogger("kuberay-standin")

#: What this stand-in does NOT do that KubeRay + Kubernetes would.
NOT_EMULATED = [
    "scheduling and node placement: no scheduler, every pod runs on this host (nodeSelector, tolerations, "
    "affinity, priority, gang scheduling and batch schedulers are ignored; pods get no nodeName)",
    "resource limits: cpu/memory/GPU requests and limits are not enforced on the containers; they only feed "
    "ray start's --num-cpus/--memory/--num-gpus (and the object store size) as KubeRay derives them",
    "GPUs: a GPU limit becomes Ray's logical num-gpus only; no device is given to a container",
    "autoscaling (enableInTreeAutoscaling, the autoscaler sidecar, minReplicas/maxReplicas changes, "
    "workersToDelete), worker group suspend, numOfHosts > 1 (multi-host groups)",
    "pod restarts other than replacing a dead worker container: a dead head is not restarted (the RayJob "
    "fails; a RayService's Ready condition goes False), restartPolicy and container restarts are ignored",
    "the submitter: K8sJobMode's submitter Kubernetes Job and SidecarMode's sidecar are not created; every "
    "submissionMode is submitted from the test process through the dashboard's job HTTP API (HTTPMode); "
    "InteractiveMode's Waiting state is not emulated",
    "readiness/liveness probes as Kubernetes probes (readiness is checked once, by the same HTTP endpoints "
    "KubeRay's probes call), init containers (KubeRay's wait-gcs-ready included), sidecar containers "
    "(only the first container of a pod template runs), lifecycle hooks",
    "Services, Ingress, Routes, the RayService serve Service and head Service (nothing resolves "
    "<cluster>-head-svc: FQ_RAY_IP/RAY_IP and dashboardURL use 127.0.0.1)",
    "GCS fault tolerance (Redis), TLS, token auth options, authOptions, NetworkPolicies",
    "RayService zero-downtime upgrades: a changed rayClusterConfig does not create a new cluster (a changed "
    "serveConfigV2 is redeployed in place); RayService validation only logs",
    "RayJob deletionStrategy / deletionRules (feature gate), clusterSelector mode, cron schedules, "
    "preRunningDeadlineSeconds, the status transition grace period, managedBy (ignored)",
    "events (Kubernetes Events are not recorded) and metrics of the KubeRay operator",
    "the ray.io/overwrite-container-cmd annotation is honoured, but a template whose command already runs "
    "`ray start` keeps its own ports, which may collide on the shared host network",
    "projected, downwardAPI, CSI and other volume types (only configMap, secret, emptyDir, hostPath and "
    "persistentVolumeClaim)",
]

#: `ray start` flags the stand-in adds to (or overrides in) KubeRay's generated command, and why.
ADDED_RAY_START_FLAGS = {
    "--port / --address": "all pods share the host network: the head's GCS gets a free port (KubeRay: 6379 or "
                          "rayStartParams.port) and workers --address=127.0.0.1:<that port> (KubeRay: the head "
                          "Service's FQDN, which nothing resolves here)",
    "--dashboard-port, --ray-client-server-port (head)": "8265 and 10001 would collide between clusters",
    "--node-manager-port, --object-manager-port, --dashboard-agent-listen-port, --dashboard-agent-grpc-port, "
    "--metrics-export-port, --runtime-env-agent-port": "distinct free ports per pod (KubeRay sets 52365 and "
    "8080; the defaults of the others collide or are random): see tests/cluster.py's docstring for which "
    "Ray 2.60 ports collide between raylets on one host",
    "--min-worker-port=0 --max-worker-port=0": "the default worker range 10002-19999 is shared by every raylet "
                                               "on the host; 0 lets the OS choose",
    "--node-ip-address=127.0.0.1": "only loopback works here (Ray rewrites it to the host's primary IP)",
    "--object-store-memory": "only when rayStartParams lacks it: 30% of the pod's memory limit (what Ray "
                             "would compute inside the pod's cgroup), at most 80% of --shm-size; without it "
                             "Ray would size the store from the whole host's memory",
    "--disable-usage-stats": "no network here",
}

GROUP, VERSION = "ray.io", "v1"
MAX_RAY_CLUSTER_NAME_LENGTH = 53
MAX_RAYJOB_NAME_LENGTH = MAX_RAY_CLUSTER_NAME_LENGTH - 6  # utils.MaxRayJobNameLength
MAX_RAYSERVICE_NAME_LENGTH = MAX_RAY_CLUSTER_NAME_LENGTH - 6  # utils.MaxRayServiceNameLength
FINALIZER = "ray.io/rayjob-finalizer"
KUBERAY_VERSION = "v1.4.2"  # utils.KUBERAY_VERSION of the sources read; written into RAY_USAGE_STATS_EXTRA_TAGS
TERMINAL_JOB_STATUSES = {"STOPPED", "SUCCEEDED", "FAILED"}
RAND_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery/pkg/util/rand
LOCALHOST = "127.0.0.1"
HEAD_PORTS = ("gcs", "dashboard", "client", "node_manager", "object_manager", "agent_http", "agent_grpc",
              "metrics", "runtime_env")
WORKER_PORTS = ("node_manager", "object_manager", "agent_http", "agent_grpc", "metrics", "runtime_env")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def rand5() -> str:
    return "".join(random.choice(RAND_ALPHABET) for _ in range(5))


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(s: str | None) -> dt.datetime | None:
    if not s:
        return None
    return dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)


def _go_time(t: dt.datetime) -> str:
    """How Go's %v prints a *metav1.Time (KubeRay's DeadlineExceeded message)."""
    return t.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")


_SUFFIX = {"m": 1e-3, "": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: Any) -> float:
    """A Kubernetes resource quantity ("500m", "8Gi", 2, "1e3") as a number."""
    s = str(value).strip()
    m = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)", s)
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def convert_param_map(params: dict[str, str]) -> str:
    """KubeRay's convertParamMap: sorted keys; "true"/"false" are switches except log-color and
    include-dashboard."""
    out = []
    for key in sorted(params):
        arg = str(params[key])
        if arg.lower() in ("true", "false") and key not in ("log-color", "include-dashboard"):
            if arg.lower() == "true":
                out.append(f" --{key} ")
        else:
            out.append(f" --{key}={arg} ")
    return "".join(out)


def kuberay_ray_start_params(params: dict[str, Any], node_type: str, resources: dict[str, Any]) -> dict[str, str]:
    """rayStartParams completed as setMissingRayStartParams + generateRayStartCommand do (without the
    address/port values, which the stand-in sets)."""
    p = {k: str(v) for k, v in (params or {}).items()}
    if node_type == "head":
        p.setdefault("dashboard-host", "0.0.0.0")
    p["block"] = "true"
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if "num-cpus" not in p:
        cpu = limits.get("cpu") or requests.get("cpu")
        if cpu is not None and quantity(cpu) != 0:
            p["num-cpus"] = str(math.ceil(quantity(cpu)))
    if "memory" not in p and limits.get("memory") is not None and quantity(limits["memory"]) != 0:
        p["memory"] = str(math.ceil(quantity(limits["memory"])))
    if "num-gpus" not in p:
        for key in sorted(limits):
            if (key.endswith("gpu") or re.search(r"nvidia\.com/mig-\d+g\.\d+gb$", key)) and quantity(limits[key]):
                p["num-gpus"] = str(math.ceil(quantity(limits[key])))
                break
    return p


def validate_rayjob(job: dict) -> str | None:
    """KubeRay's ValidateRayJobMetadata + the parts of ValidateRayJobSpec that apply here; the error
    message as KubeRay words it, or None."""
    name = job["metadata"]["name"]
    spec = job.get("spec") or {}
    if len(name) > MAX_RAYJOB_NAME_LENGTH:
        return f"The RayJob metadata is invalid: RayJob name should be no more than {MAX_RAYJOB_NAME_LENGTH} characters"
    if not _DNS1035.match(name) or len(name) > 63:
        return ("The RayJob metadata is invalid: RayJob name should be a valid DNS1035 label: [a DNS-1035 label must "
                "consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end "
                "with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is "
                "'[a-z]([-a-z0-9]*[a-z0-9])?')]")
    shutdown = bool(spec.get("shutdownAfterJobFinishes"))
    if spec.get("suspend") and not shutdown:
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false is not allowed to "
                "be suspended")
    ttl = spec.get("ttlSecondsAfterFinished") or 0
    if ttl < 0:
        return "The RayJob spec is invalid: TTLSecondsAfterFinished must be a non-negative integer"
    if not shutdown and ttl > 0:
        return ("The RayJob spec is invalid: a RayJob with shutdownAfterJobFinishes set to false cannot have "
                "TTLSecondsAfterFinished")
    if not spec.get("rayClusterSpec") and not spec.get("clusterSelector"):
        return "The RayJob spec is invalid: one of RayClusterSpec or ClusterSelector must be set"
    if spec.get("runtimeEnvYAML"):
        try:
            env = yaml.safe_load(spec["runtimeEnvYAML"])
            if env is not None and not isinstance(env, dict):
                raise ValueError("not a mapping")
        except Exception as err:  # noqa: BLE001 - KubeRay: yaml.Unmarshal's error
            return f"failed to unmarshal RuntimeEnvYAML: {spec['runtimeEnvYAML']}: {err}"
    if spec.get("activeDeadlineSeconds") is not None and spec["activeDeadlineSeconds"] <= 0:
        return "The RayJob spec is invalid: activeDeadlineSeconds must be a positive integer"
    if spec.get("backoffLimit") is not None and spec["backoffLimit"] < 0:
        return "The RayJob spec is invalid: backoffLimit must be a positive integer"
    return None


def _no_empty_strings(value: Any) -> Any:
    """Nested status values without empty strings: this API server (1.20) takes a "" inside a merge patch
    for null and refuses it for a string field; KubeRay's fields are omitempty, so leaving them out is what
    KubeRay's status looks like anyway."""
    if isinstance(value, dict):
        return {k: _no_empty_strings(v) for k, v in value.items() if v != ""}
    if isinstance(value, list):
        return [_no_empty_strings(v) for v in value]
    return value


def _omit_empty(d: dict) -> dict:
    """A status object as Go's `omitempty` writes it: no empty strings, no nulls."""
    return {k: v for k, v in d.items() if v not in ("", None)}


def _http(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed JSON or text); never through an HTTP(S)_PROXY."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as reply:
            status, raw = reply.status, reply.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    text = raw.decode(errors="replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _healthy(url: str) -> bool:
    try:
        status, body = _http("GET", url, timeout=3)
    except OSError:
        return False
    return status == 200 and "success" in str(body)


# ------------------------------------------------------------------------------------------------ pods


@dataclass
class PodSlot:
    """One pod of a cluster: its Pod object, its container, its ports."""
    role: str  # "head" | "worker"
    group: str  # "headgroup" or the worker group's name
    template: dict
    ray_start_params: dict
    ports: dict[str, int]
    pod_name: str = ""
    container: str = ""
    ready: bool = False
    finished: bool = False  # its container ended and the Pod object was marked so
    start_error: str = ""


class RayClusterRun:
    """The pods of one RayCluster (of a RayJob or a RayService) and its RayCluster object."""

    def __init__(self, standin: "KubeRayStandIn", namespace: str, name: str, spec: dict, owner: dict, crd: str):
        self.s, self.ns, self.name, self.spec, self.owner, self.crd = standin, namespace, name, spec, owner, crd
        self.uid = ""
        self.slots: list[PodSlot] = []
        self.dead_head: str = ""
        self.torn_down = False
        self.logs_dir = standin.workdir / "logs" / namespace / owner["name"]
        self.serve_port = 0

    # ---- creation
    def create(self) -> None:
        labels = {**(self.owner.get("labels") or {}), "ray.io/originated-from-cr-name": self.owner["name"],
                  "ray.io/originated-from-crd": self.crd}
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayCluster",
                "metadata": {"name": self.name, "namespace": self.ns, "labels": labels,
                             "annotations": self.owner.get("annotations") or {},
                             "ownerReferences": [self._ref(self.owner)]},
                "spec": copy.deepcopy(self.spec)}
        try:
            obj = self.s.custom.create_namespaced_custom_object(GROUP, VERSION, self.ns, "rayclusters", body)
        except self.s.ApiException as err:
            if err.status != 409:
                raise
            obj = self.s.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, "rayclusters", self.name)
        self.uid = obj["metadata"]["uid"]
        head = self.spec["headGroupSpec"]
        self.slots.append(self._slot("head", "headgroup", head))
        for group in self.spec.get("workerGroupSpecs") or []:
            if group.get("suspend"):
                continue
            for _ in range(self._replicas(group)):
                self.slots.append(self._slot("worker", group["groupName"], group))
        self.ensure_pods()

    @staticmethod
    def _replicas(group: dict) -> int:
        """GetWorkerGroupDesiredReplicas."""
        lo, hi = group.get("minReplicas", 0) or 0, group.get("maxReplicas", 2**31 - 1)
        want = group.get("replicas")
        if lo > hi:
            return hi
        if want is None or want < lo:
            return lo
        return min(want, hi)

    def _slot(self, role: str, group: str, spec: dict) -> PodSlot:
        names = HEAD_PORTS if role == "head" else WORKER_PORTS
        ports = dict(zip(names, self.s.allocate_ports(len(names))))
        return PodSlot(role=role, group=group, template=copy.deepcopy(spec["template"]),
                       ray_start_params=dict(spec.get("rayStartParams") or {}), ports=ports)

    @property
    def head(self) -> PodSlot:
        return self.slots[0]

    @property
    def gcs_port(self) -> int:
        return self.head.ports["gcs"]

    @property
    def dashboard_port(self) -> int:
        return self.head.ports["dashboard"]

    @property
    def dashboard(self) -> str:
        return f"http://{LOCALHOST}:{self.dashboard_port}"

    @staticmethod
    def _ref(owner: dict) -> dict:
        return {"apiVersion": f"{GROUP}/{VERSION}", "kind": owner["kind"], "name": owner["name"],
                "uid": owner["uid"], "controller": True, "blockOwnerDeletion": True}

    def ensure_pods(self) -> None:
        """Start every slot without a container (a failed start is retried at the next call)."""
        for slot in self.slots:
            if not slot.container and not self.torn_down:
                try:
                    self._start(slot)
                    slot.start_error = ""
                except Exception as err:  # noqa: BLE001 - kept on the slot, retried
                    slot.start_error = f"{type(err).__name__}: {err}"
                    log.warning("%s/%s: pod of %s not started: %s", self.ns, self.name, slot.group, slot.start_error)

    def _ray_start(self, slot: PodSlot, container: dict) -> str:
        p = kuberay_ray_start_params(slot.ray_start_params, slot.role, container.get("resources") or {})
        ports = slot.ports
        for key in ("port", "address", "dashboard-port", "ray-client-server-port"):
            p.pop(key, None)
        p.update({"node-manager-port": ports["node_manager"], "object-manager-port": ports["object_manager"],
                  "dashboard-agent-listen-port": ports["agent_http"], "dashboard-agent-grpc-port": ports["agent_grpc"],
                  "metrics-export-port": ports["metrics"], "runtime-env-agent-port": ports["runtime_env"],
                  "min-worker-port": 0, "max-worker-port": 0, "node-ip-address": LOCALHOST,
                  "disable-usage-stats": "true"})
        if "object-store-memory" not in p:
            limit = (container.get("resources") or {}).get("limits", {}).get("memory")
            mem = quantity(limit) if limit else self.s.default_pod_memory
            p["object-store-memory"] = int(min(0.3 * mem, 0.8 * self.s.shm_bytes))
        if slot.role == "head":
            p.update({"port": self.gcs_port, "dashboard-port": ports["dashboard"],
                      "ray-client-server-port": ports["client"]})
            return f"ray start --head {convert_param_map(p)}"
        p["address"] = f"{LOCALHOST}:{self.gcs_port}"
        return f"ray start {convert_param_map(p)}"

    def _start(self, slot: PodSlot) -> None:
        template = copy.deepcopy(slot.template)
        pod_spec = template.get("spec") or {}
        container = pod_spec["containers"][0]
        ray_start = self._ray_start(slot, container)
        # BuildPod: wrap the container's command unless it already runs `ray start`
        cmd = "".join(f" {c} " for c in container.get("command") or []) + \
              "".join(f" {a} " for a in container.get("args") or [])
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        overwrite = str(annotations.get("ray.io/overwrite-container-cmd", "")).lower() == "true"
        if not overwrite and "ray start" not in cmd:
            generated = f"ulimit -n 65536; {ray_start}"
            container["command"] = ["/bin/bash", "-c", "--"]
            container["args"] = [f"{cmd} && {generated}" if cmd else generated]
        # KubeRay's env, in KubeRay's order (setContainerEnvVars)
        env = list(container.get("env") or [])
        names = {e["name"] for e in env}
        if slot.role == "worker":
            env += [{"name": "FQ_RAY_IP", "value": LOCALHOST}, {"name": "RAY_IP", "value": LOCALHOST}]
        env += [{"name": "RAY_CLUSTER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/cluster']"}}},
                {"name": "RAY_CLOUD_INSTANCE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "RAY_NODE_TYPE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['ray.io/group']"}}},
                {"name": "KUBERAY_GEN_RAY_START_CMD", "value": ray_start}]
        if "RAY_PORT" not in names:
            env.append({"name": "RAY_PORT", "value": str(self.gcs_port)})
        if self.crd == "RayService":
            for k, v in (("RAY_timeout_ms_task_wait_for_death_info", "0"), ("RAY_gcs_server_request_timeout_seconds", "5"),
                         ("RAY_SERVE_KV_TIMEOUT_S", "5")):
                if k not in names:
                    env.append({"name": k, "value": v})
        if "RAY_ADDRESS" not in names:
            env.append({"name": "RAY_ADDRESS", "value": f"{LOCALHOST}:{self.gcs_port}"})
        if "RAY_USAGE_STATS_KUBERAY_IN_USE" not in names:
            env.append({"name": "RAY_USAGE_STATS_KUBERAY_IN_USE", "value": "1"})
        if slot.role == "head":
            env.append({"name": "RAY_USAGE_STATS_EXTRA_TAGS",
                        "value": f"kuberay_version={KUBERAY_VERSION};kuberay_crd={self.crd}"})
        if "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE" not in names:
            env.append({"name": "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE", "value": "1"})
        container["env"] = env
        # the /dev/shm emptyDir KubeRay adds
        volumes = list(pod_spec.get("volumes") or [])
        if not any(m.get("mountPath") == "/dev/shm" for m in container.get("volumeMounts") or []):
            volumes.append({"name": "shared-mem", "emptyDir": {"medium": "Memory"}})
            container.setdefault("volumeMounts", []).append({"name": "shared-mem", "mountPath": "/dev/shm"})
        pod_spec["volumes"] = volumes
        pod_spec.pop("nodeName", None)
        # labelPod
        tmeta = template.get("metadata") or {}
        labels = {k: v for k, v in (tmeta.get("labels") or {}).items()
                  if k not in ("ray.io/node-type", "ray.io/group", "ray.io/cluster")}
        labels.update({"ray.io/is-ray-node": "yes", "ray.io/cluster": self.name, "ray.io/node-type": slot.role,
                       "ray.io/group": slot.group, "ray.io/identifier": f"{self.name}-{slot.role}"[-63:],
                       "app.kubernetes.io/name": "kuberay", "app.kubernetes.io/created-by": "kuberay-operator"})
        if self.crd == "RayService":
            labels["ray.io/serve"] = "false" if slot.role == "head" else "true"
        prefix = self.name[:50]
        generate = f"{prefix}-head-" if slot.role == "head" else f"{prefix}-{slot.group}-worker-"
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"generateName": generate.lower(), "namespace": self.ns, "labels": labels,
                            "annotations": {**(tmeta.get("annotations") or {}),
                                            "kuberay-standin/container": "pending"},
                            "ownerReferences": [{"apiVersion": f"{GROUP}/{VERSION}", "kind": "RayCluster",
                                                 "name": self.name, "uid": self.uid, "controller": True,
                                                 "blockOwnerDeletion": True}]},
               "spec": pod_spec}
        created = self.s.core.create_namespaced_pod(self.ns, pod)
        slot.pod_name = created.metadata.name
        pod["metadata"].update(name=slot.pod_name, uid=created.metadata.uid)
        try:
            args = self._podman_args(slot, pod, container)
        except Exception:
            self._set_pod_status(slot, "Pending", waiting="CreateContainerConfigError")
            self._delete_pod(slot.pod_name)
            slot.pod_name = ""
            raise
        name = args[args.index("--name") + 1]
        out = self.s.podman(["run", "-d", *args], timeout=120)
        if out.returncode != 0:
            self._delete_pod(slot.pod_name)
            slot.pod_name = ""
            raise RuntimeError(f"podman run failed: {out.stderr.strip()[-2000:]}")
        slot.container, slot.ready, slot.finished = name, False, False
        self.s.register_container(name, self)
        try:
            self.s.core.patch_namespaced_pod(slot.pod_name, self.ns,
                                             {"metadata": {"annotations": {"kuberay-standin/container": name}}},
                                             _content_type="application/merge-patch+json")
        except self.s.ApiException:
            pass
        self._set_pod_status(slot, "Running")
        log.info("%s/%s: started %s pod %s as container %s", self.ns, self.name, slot.group, slot.pod_name, name)

    def _podman_args(self, slot: PodSlot, pod: dict, container: dict) -> list[str]:
        pod_dir = self.s.workdir / "pods" / self.ns / slot.pod_name
        pod_dir.mkdir(parents=True, exist_ok=True)
        name = f"krs-{self.ns}-{slot.pod_name}"[:120]
        args = ["--name", name, "--network", "host", "--shm-size", self.s.shm_size,
                "--label", f"{self.s.LABEL}={self.s.id}", "--label", f"kuberay-standin.pod={self.ns}/{slot.pod_name}",
                "--label", f"kuberay-standin.cluster={self.ns}/{self.name}"]
        env = self.s.resolve_env(self.ns, pod, container)
        env.setdefault("HOME", "/home/ray")
        for k, v in env.items():
            args += ["-e", f"{k}={v}"]
        args += self.s.volume_args(self.ns, pod, container, pod_dir)
        if container.get("workingDir"):
            args += ["-w", container["workingDir"]]
        sc = {**((pod.get("spec") or {}).get("securityContext") or {}), **(container.get("securityContext") or {})}
        if sc.get("runAsUser") is not None:
            args += ["--user", f"{sc['runAsUser']}" + (f":{sc['runAsGroup']}" if sc.get("runAsGroup") is not None else "")]
        command, cargs = container.get("command"), list(container.get("args") or [])
        if command:
            args += ["--entrypoint", json.dumps(command)]
        args.append(container["image"])
        return args + [self.s.expand(a, env) for a in cargs]

    def _set_pod_status(self, slot: PodSlot, phase: str, exit_code: int | None = None, waiting: str = "") -> None:
        now = _iso(_now())
        ready = "True" if slot.ready and phase == "Running" else "False"
        cname = (slot.template.get("spec") or {}).get("containers", [{}])[0].get("name", "ray")
        if phase == "Running":
            state = {"running": {"startedAt": now}}
        elif waiting:
            state = {"waiting": {"reason": waiting}}
        else:
            state = {"terminated": {"exitCode": exit_code or 0, "reason": "Completed" if not exit_code else "Error",
                                    "finishedAt": now}}
        status = {"phase": phase, "podIP": LOCALHOST, "hostIP": LOCALHOST, "startTime": now,
                  "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                                 {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                                 {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                                 {"type": "Ready", "status": ready, "lastTransitionTime": now}],
                  "containerStatuses": [{"name": cname, "ready": ready == "True", "restartCount": 0,
                                         "image": slot.template["spec"]["containers"][0]["image"], "imageID": "",
                                         "started": phase == "Running", "state": state}]}
        try:
            self.s.core.patch_namespaced_pod_status(slot.pod_name, self.ns, {"status": status},
                                                   _content_type="application/merge-patch+json")
        except self.s.ApiException as err:
            if err.status != 404:
                log.warning("pod status %s: %s", slot.pod_name, err.reason)

    def _delete_pod(self, name: str) -> None:
        if not name:
            return
        try:
            self.s.core.delete_namespaced_pod(name, self.ns, grace_period_seconds=0)
        except self.s.ApiException as err:
            if err.status != 404:
                raise

    # ---- observation
    def check(self) -> None:
        """Readiness of new pods, ended containers (a dead worker is replaced, a dead head noted)."""
        for slot in self.slots:
            if not slot.container:
                continue
            state = self.s.container_state(slot.container)
            if state is not None and state[0] not in ("running", "created", "configured", "initialized"):
                code = state[1]
                self._save_container_log(slot)
                slot.finished = True
                slot.ready = False
                self._set_pod_status(slot, "Succeeded" if code == 0 else "Failed", exit_code=code)
                if slot.role == "head":
                    self.dead_head = (f"Ray head pod {slot.pod_name} terminated (container {slot.container} exited "
                                      f"with code {code}): the Ray head is gone")
                    log.warning("%s/%s: %s", self.ns, self.name, self.dead_head)
                    return
                log.warning("%s/%s: worker %s exited (%s); replacing it", self.ns, self.name, slot.pod_name, code)
                self.s.remove_containers([slot.container])
                self.s.forget_container(slot.container)
                self._delete_pod(slot.pod_name)
                slot.container, slot.pod_name = "", ""
                continue
            if not slot.ready and state is not None and state[0] == "running":
                ok = _healthy(f"http://{LOCALHOST}:{slot.ports['agent_http']}/api/local_raylet_healthz")
                if ok and slot.role == "head":
                    ok = _healthy(f"{self.dashboard}/api/gcs_healthz")
                if ok:
                    slot.ready = True
                    self._set_pod_status(slot, "Running")
        self.ensure_pods()

    def is_ready(self) -> bool:
        return bool(self.slots) and all(s.ready for s in self.slots)

    def cluster_status(self) -> dict:
        workers = [s for s in self.slots if s.role == "worker"]
        groups = [g for g in self.spec.get("workerGroupSpecs") or [] if not g.get("suspend")]
        status = {"state": "ready" if self.is_ready() else "",
                  "desiredWorkerReplicas": sum(self._replicas(g) for g in groups),
                  "minWorkerReplicas": sum(g.get("minReplicas", 0) or 0 for g in groups),
                  "maxWorkerReplicas": sum(g.get("maxReplicas", 0) or 0 for g in groups),
                  "readyWorkerReplicas": sum(s.ready for s in workers),
                  "availableWorkerReplicas": sum(bool(s.container) and not s.finished for s in workers),
                  "head": {"podName": self.head.pod_name, "podIP": LOCALHOST, "serviceIP": LOCALHOST},
                  "endpoints": {"gcs-server": str(self.gcs_port), "dashboard": str(self.dashboard_port),
                                "client": str(self.head.ports["client"]), "metrics": str(self.head.ports["metrics"])}}
        if not status["state"]:
            del status["state"]
        return status

    def publish_status(self) -> dict:
        status = self.cluster_status()
        try:
            self.s.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.ns, "rayclusters", self.name, {"status": {"state": None, **status}})
        except self.s.ApiException as err:
            if err.status != 404:
                log.warning("RayCluster status %s: %s", self.name, err.reason)
        return status

    # ---- teardown
    def _save_container_log(self, slot: PodSlot) -> None:
        if not slot.container:
            return
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        out = self.s.podman(["logs", slot.container], timeout=60)
        path = self.logs_dir / f"{slot.pod_name or slot.container}.log"
        path.write_text(out.stdout + out.stderr)
        self.s.saved_logs[slot.container] = path

    def teardown(self, delete_object: bool = True) -> None:
        """Save each container's log, remove the containers, delete the Pod objects and the RayCluster."""
        self.torn_down = True
        live = [s for s in self.slots if s.container]
        for slot in live:
            if not slot.finished:
                self._save_container_log(slot)
        if live:
            self.s.remove_containers([s.container for s in live])
        for slot in live:
            self.s.forget_container(slot.container)
        for slot in self.slots:
            try:
                self._delete_pod(slot.pod_name)
            except Exception as err:  # noqa: BLE001
                log.warning("deleting pod %s: %s", slot.pod_name, err)
            slot.container, slot.ready = "", False
        if delete_object:
            try:
                self.s.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, "rayclusters", self.name)
            except self.s.ApiException as err:
                if err.status != 404:
                    log.warning("deleting RayCluster %s: %s", self.name, err.reason)
        self.s.release_ports([p for s in self.slots for p in s.ports.values()])
        log.info("%s/%s: cluster torn down", self.ns, self.name)


# ------------------------------------------------------------------------------------------- runners


class _Runner(threading.Thread):
    plural = ""

    def __init__(self, standin: "KubeRayStandIn", obj: dict):
        super().__init__(daemon=True, name=f"{self.plural}/{obj['metadata']['namespace']}/{obj['metadata']['name']}")
        self.s = standin
        self.ns, self.name, self.uid = obj["metadata"]["namespace"], obj["metadata"]["name"], obj["metadata"]["uid"]
        self.cluster: RayClusterRun | None = None
        self.done = False

    def get(self) -> dict | None:
        try:
            obj = self.s.custom.get_namespaced_custom_object(GROUP, VERSION, self.ns, self.plural, self.name)
        except self.s.ApiException as err:
            if err.status == 404:
                return None
            raise
        return obj if obj["metadata"]["uid"] == self.uid else None

    def patch_status(self, status: dict) -> None:
        """A JSON merge patch of the status subresource. KubeRay's status fields are `omitempty`: an empty
        string (JobStatusNew, JobDeploymentStatusNew, a cleared jobId...) is absent, so "" deletes the field."""
        body = {k: (None if v == "" else _no_empty_strings(v)) for k, v in status.items()}
        self.s.custom.patch_namespaced_custom_object_status(GROUP, VERSION, self.ns, self.plural, self.name,
                                                            {"status": body})

    def run(self) -> None:
        while not self.s._stopping.is_set() and not self.done:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the next poll retries, as a controller requeues
                log.error("%s: %s", self.name, traceback.format_exc())
            self.s._stopping.wait(self.s.poll_s)

    def teardown(self) -> None:
        if self.cluster is not None and not self.cluster.torn_down:
            self.cluster.teardown()

    def step(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class RayJobRunner(_Runner):
    plural = "rayjobs"

    def __init__(self, standin: "KubeRayStandIn", obj: dict):
        super().__init__(standin, obj)
        self.job_logs_saved: set[str] = set()

    # ---- helpers
    def _log_path(self, job_id: str) -> Path:
        return self.s.workdir / "logs" / self.ns / self.name / f"job-{job_id}.log"

    def _save_job_logs(self, job_id: str) -> None:
        if not job_id or job_id in self.job_logs_saved or self.cluster is None or self.cluster.dead_head:
            return
        try:
            status, body = _http("GET", f"{self.cluster.dashboard}/api/jobs/{job_id}/logs", timeout=30)
        except OSError as err:
            log.warning("job logs of %s: %s", job_id, err)
            return
        if status == 200 and isinstance(body, dict):
            path = self._log_path(job_id)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body.get("logs") or "")
            self.job_logs_saved.add(job_id)

    def _stop_ray_job(self, job_id: str) -> None:
        if self.cluster is None or self.cluster.torn_down or not job_id:
            return
        try:
            _http("POST", f"{self.cluster.dashboard}/api/jobs/{job_id}/stop", timeout=10)
        except OSError:
            pass

    def _finish(self, st: dict, new: dict) -> dict:
        """updateRayJobStatus + checkBackoffLimitAndUpdateStatusIfNeeded for a transition."""
        jds = new.get("jobDeploymentStatus", st.get("jobDeploymentStatus"))
        job_status = new.get("jobStatus", st.get("jobStatus"))
        failed, succeeded = st.get("failed") or 0, st.get("succeeded") or 0
        if jds == "Failed":
            failed += 1
        if job_status == "SUCCEEDED" and jds == "Complete":
            succeeded += 1
        new.update(failed=failed, succeeded=succeeded)
        if jds in ("Complete", "Failed"):
            new["endTime"] = _iso(_now())
        backoff = (self._spec.get("backoffLimit"))
        reason = new.get("reason", st.get("reason"))
        if jds == "Failed" and backoff is not None and failed < backoff + 1 and reason != "DeadlineExceeded":
            new["jobDeploymentStatus"] = "Retrying"
            new.pop("endTime", None)
        return new

    def _deadline_passed(self, st: dict) -> dict | None:
        ads = self._spec.get("activeDeadlineSeconds")
        start = _parse_iso(st.get("startTime"))
        if ads is None or start is None or _now() < start + dt.timedelta(seconds=ads):
            return None
        self._stop_ray_job(st.get("jobId") or "")
        return self._finish(st, {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded",
                                 "message": f"The RayJob has passed the activeDeadlineSeconds. StartTime: "
                                            f"{_go_time(start)}. ActiveDeadlineSeconds: {ads}"})

    def _ensure_cluster(self, obj: dict, st: dict) -> RayClusterRun:
        name = st["rayClusterName"]
        if self.cluster is None or self.cluster.name != name:
            if self.cluster is not None and not self.cluster.torn_down:
                self.cluster.teardown()
            meta = obj["metadata"]
            owner = {"kind": "RayJob", "name": self.name, "uid": self.uid, "labels": meta.get("labels"),
                     "annotations": meta.get("annotations")}
            self.cluster = RayClusterRun(self.s, self.ns, name, self._spec["rayClusterSpec"], owner, "RayJob")
            self.cluster.create()
        return self.cluster

    def _submit(self, st: dict) -> None:
        spec = self._spec
        body: dict[str, Any] = {"entrypoint": spec.get("entrypoint", ""), "submission_id": st["jobId"]}
        if spec.get("runtimeEnvYAML"):
            body["runtime_env"] = yaml.safe_load(spec["runtimeEnvYAML"]) or {}
        if spec.get("metadata"):
            body["metadata"] = spec["metadata"]
        for key, field_ in (("entrypointNumCpus", "entrypoint_num_cpus"), ("entrypointNumGpus", "entrypoint_num_gpus")):
            if spec.get(key):
                body[field_] = spec[key]
        if spec.get("entrypointResources"):
            body["entrypoint_resources"] = json.loads(spec["entrypointResources"])
        status, reply = _http("POST", f"{self.cluster.dashboard}/api/jobs/", body, timeout=60)
        if status not in (200, 201):
            raise RuntimeError(f"job submission of {st['jobId']} failed ({status}): {reply}")
        log.info("%s/%s: submitted Ray job %s", self.ns, self.name, st["jobId"])

    # ---- the reconcile step
    def step(self) -> None:
        obj = self.get()
        if obj is None:
            self.teardown()
            self.done = True
            return
        meta, st = obj["metadata"], obj.get("status") or {}
        self._spec = obj.get("spec") or {}
        if meta.get("deletionTimestamp"):
            if (st.get("jobStatus") or "") not in TERMINAL_JOB_STATUSES:
                self._stop_ray_job(st.get("jobId") or "")
            self.teardown()
            self.s.remove_finalizer("rayjobs", self.ns, self.name)
            self.done = True
            return
        error = validate_rayjob(obj)
        if error:
            if st.get("jobDeploymentStatus") != "ValidationFailed" or st.get("message") != error:
                self.patch_status(self._finish(st, {"jobDeploymentStatus": "ValidationFailed",
                                                    "reason": "ValidationFailed", "message": error}))
            return
        jds = st.get("jobDeploymentStatus") or ""
        handler = {"": self._new, "Initializing": self._initializing, "Running": self._running,
                   "Suspending": self._release, "Retrying": self._release, "Suspended": self._suspended,
                   "Complete": self._terminal, "Failed": self._terminal}.get(jds)
        if handler is not None:
            handler(obj, st)

    def _new(self, obj: dict, st: dict) -> None:
        if self.s.add_finalizers and FINALIZER not in (obj["metadata"].get("finalizers") or []):
            self.s.custom.patch_namespaced_custom_object(
                GROUP, VERSION, self.ns, "rayjobs", self.name,
                {"metadata": {"finalizers": [*(obj["metadata"].get("finalizers") or []), FINALIZER]}})
            self.s.finalized.add(("rayjobs", self.ns, self.name))
        new = {"jobDeploymentStatus": "Initializing", "startTime": _iso(_now())}
        if not st.get("jobId") and self._spec.get("submissionMode") != "InteractiveMode":
            new["jobId"] = self._spec.get("jobId") or f"{self.name}-{rand5()}"
        if not st.get("rayClusterName"):
            new["rayClusterName"] = (self._spec.get("clusterSelector") or {}).get("ray.io/cluster") or \
                                    f"{self.name}-{rand5()}"
        if not st.get("jobStatus"):
            new["jobStatus"] = ""
        self.patch_status(new)

    def _suspended_or_late(self, st: dict) -> bool:
        """What KubeRay checks first while Initializing or Running: a suspend request, a passed deadline."""
        if self._spec.get("suspend"):
            self.patch_status({"jobDeploymentStatus": "Suspending"})
            return True
        passed = self._deadline_passed(st)
        if passed:
            self.patch_status(passed)
        return bool(passed)

    def _head_died(self, st: dict, cluster: RayClusterRun) -> bool:
        cluster.check()
        if cluster.dead_head:
            self.patch_status(self._finish(st, {"jobDeploymentStatus": "Failed", "reason": "AppFailed",
                                                "message": cluster.dead_head}))
        return bool(cluster.dead_head)

    def _initializing(self, obj: dict, st: dict) -> None:
        if self._suspended_or_late(st):
            return
        cluster = self._ensure_cluster(obj, st)
        if self._head_died(st, cluster):
            return
        cstatus = cluster.publish_status()
        if not cluster.is_ready():
            if st.get("rayClusterStatus") != cstatus:
                self.patch_status({"rayClusterStatus": cstatus})
            return
        self.patch_status({"dashboardURL": f"{LOCALHOST}:{cluster.dashboard_port}",
                           "jobDeploymentStatus": "Running", "rayClusterStatus": cstatus})

    def _running(self, obj: dict, st: dict) -> None:
        if self._suspended_or_late(st):
            return
        if self.cluster is None or self.cluster.name != st.get("rayClusterName"):
            # the stand-in never started this cluster (or lost it): nothing runs it any more
            self.patch_status(self._finish(st, {"jobDeploymentStatus": "Failed", "reason": "AppFailed",
                                                "message": "Ray head pod not found."}))
            return
        cluster = self.cluster
        if self._head_died(st, cluster):
            return
        cstatus = cluster.publish_status()
        try:
            status, info = _http("GET", f"{cluster.dashboard}/api/jobs/{st['jobId']}", timeout=10)
        except OSError as err:
            log.info("%s: job info: %s", self.name, err)
            return
        if status == 404 or (status == 200 and info is None):
            self._submit(st)
            return
        if status != 200 or not isinstance(info, dict):
            return
        job_status = info.get("status") or ""
        new: dict[str, Any] = {"jobStatus": job_status, "jobDeploymentStatus": "Running", "reason": "",
                               "message": info.get("message") or "", "rayClusterStatus": cstatus}
        times = {}
        if info.get("start_time"):
            times["startTime"] = _iso(dt.datetime.fromtimestamp(info["start_time"] / 1000, dt.timezone.utc))
        if info.get("end_time"):
            times["endTime"] = _iso(dt.datetime.fromtimestamp(info["end_time"] / 1000, dt.timezone.utc))
        if times:
            new["rayJobInfo"] = times
        if job_status in TERMINAL_JOB_STATUSES:
            self._save_job_logs(st["jobId"])
            new["jobDeploymentStatus"] = "Complete"
            if job_status == "FAILED":
                new.update(jobDeploymentStatus="Failed", reason="AppFailed")
            new = self._finish(st, new)
        if any((st.get(k) if st.get(k) is not None else "") != (v if v is not None else "") for k, v in new.items()):
            self.patch_status(new)

    def _release(self, obj: dict, st: dict) -> None:
        """Suspending / Retrying: delete the cluster, reset the status."""
        self.teardown()
        self._delete_raycluster(st)
        self.cluster = None
        nxt = "Suspended" if st.get("jobDeploymentStatus") == "Suspending" else ""
        self.patch_status({"rayClusterStatus": None, "rayClusterName": "", "dashboardURL": "", "jobId": "",
                           "message": "", "reason": "", "rayJobInfo": None, "jobStatus": "",
                           "jobDeploymentStatus": nxt})

    def _suspended(self, obj: dict, st: dict) -> None:
        if not self._spec.get("suspend"):
            self.patch_status({"jobStatus": "", "jobDeploymentStatus": ""})

    def _terminal(self, obj: dict, st: dict) -> None:
        if self.cluster is not None and not self.cluster.torn_down:
            self._save_job_logs(st.get("jobId") or "")
            if (st.get("jobStatus") or "") not in TERMINAL_JOB_STATUSES:
                self._stop_ray_job(st.get("jobId") or "")  # Failed before Ray finished (deadline, dead head)
        if not self._spec.get("shutdownAfterJobFinishes") or self._spec.get("clusterSelector"):
            return
        ttl = self._spec.get("ttlSecondsAfterFinished") or 0
        if self.s.ttl_cap_s is not None:
            ttl = min(ttl, self.s.ttl_cap_s)
        end = _parse_iso(st.get("endTime")) or _now()
        if (dt.datetime.now(dt.timezone.utc) - end).total_seconds() < ttl:
            return
        if self.s.delete_rayjob_after_finish:
            self.teardown()
            self.s.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, "rayjobs", self.name)
            return
        if self.cluster is not None and not self.cluster.torn_down:
            self.cluster.teardown()
        elif self.cluster is None:
            self._delete_raycluster(st)

    def _delete_raycluster(self, st: dict) -> None:
        """The RayCluster object of the status's rayClusterName (when the stand-in holds no running copy)."""
        if not st.get("rayClusterName"):
            return
        try:
            self.s.custom.delete_namespaced_custom_object(GROUP, VERSION, self.ns, "rayclusters", st["rayClusterName"])
        except self.s.ApiException as err:
            if err.status != 404:
                raise


class RayServiceRunner(_Runner):
    plural = "rayservices"

    def __init__(self, standin: "KubeRayStandIn", obj: dict):
        super().__init__(standin, obj)
        self.deployed = ""  # the serveConfigV2 text last deployed

    def step(self) -> None:
        obj = self.get()
        if obj is None or obj["metadata"].get("deletionTimestamp"):
            self.teardown()
            self.done = True
            return
        spec, st = obj.get("spec") or {}, obj.get("status") or {}
        name = self.name
        if len(name) > MAX_RAYSERVICE_NAME_LENGTH or not _DNS1035.match(name):
            log.warning("The RayService metadata is invalid: RayService name should be no more than %d characters",
                        MAX_RAYSERVICE_NAME_LENGTH)
            return
        if self.cluster is None:
            meta = obj["metadata"]
            owner = {"kind": "RayService", "name": name, "uid": self.uid, "labels": meta.get("labels"),
                     "annotations": meta.get("annotations")}
            self.cluster = RayClusterRun(self.s, self.ns, f"{name}-{rand5()}", spec["rayClusterConfig"], owner,
                                         "RayService")
            self.cluster.serve_port = self.s.allocate_ports(1)[0]
            self.cluster.create()
            now = _iso(_now())
            self.patch_status({"pendingServiceStatus": {"rayClusterName": self.cluster.name},
                               "conditions": [{"type": "Ready", "status": "False", "reason": "Initializing",
                                               "message": "Initializing", "lastTransitionTime": now,
                                               "observedGeneration": obj["metadata"].get("generation", 1)},
                                              {"type": "UpgradeInProgress", "status": "False",
                                               "reason": "NoPendingCluster", "message": "NoPendingCluster",
                                               "lastTransitionTime": now,
                                               "observedGeneration": obj["metadata"].get("generation", 1)}],
                               "observedGeneration": obj["metadata"].get("generation", 1),
                               "lastUpdateTime": now})
            return
        cluster = self.cluster
        cluster.check()
        cstatus = cluster.publish_status()
        if cluster.dead_head:
            self._set_ready(obj, st, False, "ZeroServeEndpoints", cluster.dead_head, {})
            return
        if not cluster.is_ready():
            return
        config_text = spec.get("serveConfigV2") or ""
        if config_text and config_text != self.deployed:
            config = yaml.safe_load(config_text) or {}
            config.setdefault("proxy_location", "HeadOnly")  # every node's proxy would bind one host port
            http = config.setdefault("http_options", {})
            http.setdefault("host", "0.0.0.0")
            http["port"] = cluster.serve_port
            status, reply = _http("PUT", f"{cluster.dashboard}/api/serve/applications/", config, timeout=60)
            if status != 200:
                log.warning("%s: serve deploy failed (%s): %s", name, status, reply)
                return
            self.deployed = config_text
            log.info("%s/%s: deployed serveConfigV2 on %s", self.ns, name, cluster.name)
        try:
            status, reply = _http("GET", f"{cluster.dashboard}/api/serve/applications/", timeout=10)
        except OSError:
            return
        if status != 200 or not isinstance(reply, dict):
            return
        apps = {}
        for app, info in (reply.get("applications") or {}).items():
            # KubeRay's message fields are omitempty: an empty one is left out (Serve answers null or "", and
            # this API server refuses both for a string field)
            apps[app] = _omit_empty({"status": info.get("status"), "message": info.get("message"),
                                     "serveDeploymentStatuses": {
                                         d: _omit_empty({"status": v.get("status"), "message": v.get("message")})
                                         for d, v in (info.get("deployments") or {}).items()}})
        endpoints = sum(1 for p in (reply.get("proxies") or {}).values()
                        if (p.get("status") if isinstance(p, dict) else p) == "HEALTHY")
        running = bool(apps) and all(a.get("status") == "RUNNING" for a in apps.values())
        service = {"applicationStatuses": apps, "rayClusterName": cluster.name, "rayClusterStatus": cstatus}
        self._set_ready(obj, st, running, "NonZeroServeEndpoints" if running else "Initializing", "", service,
                        endpoints)

    def _set_ready(self, obj: dict, st: dict, ready: bool, reason: str, message: str, service: dict,
                   endpoints: int = 0) -> None:
        now = _iso(_now())
        gen = obj["metadata"].get("generation", 1)
        old = {c["type"]: c for c in st.get("conditions") or []}
        def cond(ctype, status, why, msg=""):
            prev = old.get(ctype) or {}
            when = prev.get("lastTransitionTime") if prev.get("status") == status else now
            # metav1.Condition requires a message, and this API server refuses an empty one (see
            # _no_empty_strings): the reason stands in for an empty message
            return {"type": ctype, "status": status, "reason": why, "message": msg or why,
                    "lastTransitionTime": when or now, "observedGeneration": gen}
        active = dict(service)
        if ready or (st.get("activeServiceStatus") or {}).get("rayClusterName"):
            status = {"activeServiceStatus": active, "pendingServiceStatus": None}
        else:
            status = {"pendingServiceStatus": active}
        status.update({"serviceStatus": "Running" if ready else None, "numServeEndpoints": endpoints if ready else 0,
                       "conditions": [cond("Ready", "True" if ready else "False", reason, message),
                                      cond("UpgradeInProgress", "False", "NoPendingCluster")],
                       "observedGeneration": gen})
        current = {k: st.get(k) for k in status}
        changed = any(json.dumps(current[k], sort_keys=True) != json.dumps(v, sort_keys=True)
                      for k, v in status.items() if k != "conditions") or \
            [(c["type"], c["status"], c["reason"]) for c in st.get("conditions") or []] != \
            [(c["type"], c["status"], c["reason"]) for c in status["conditions"]]
        if changed:
            status["lastUpdateTime"] = now
            self.patch_status(status)


# ----------------------------------------------------------------------------------------- the stand-in


class KubeRayStandIn:
    """Run RayJobs/RayServices of a real API server as podman containers (see the module docstring).

    >>> with KubeRayStandIn(kubeconfig, [".../tools/images/podman.sh"], tmp_path, namespaces=["ns"]) as kr:
    ...     ...  # create RayJobs; kr.containers("job"), kr.logs(container), kr.job_logs("job")
    """

    LABEL = "kuberay-standin"

    def __init__(self, kubeconfig: Path | str, podman: list[str] | str, workdir: Path | str,
                 namespaces: list[str] | None = None, *, poll_s: float = 1.0, ttl_cap_s: float | None = None,
                 delete_rayjob_after_finish: bool = False, shm_size: str = "2g", add_finalizers: bool = True,
                 default_pod_memory: str = "4Gi"):
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException

        self.ApiException = ApiException
        self.api = config.new_client_from_config(str(kubeconfig))
        self.custom, self.core = client.CustomObjectsApi(self.api), client.CoreV1Api(self.api)
        self.podman_cmd = shlex.split(podman) if isinstance(podman, str) else list(podman)
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.namespaces = list(namespaces) if namespaces else None
        self.poll_s, self.ttl_cap_s = poll_s, ttl_cap_s
        self.delete_rayjob_after_finish, self.add_finalizers = delete_rayjob_after_finish, add_finalizers
        self.shm_size, self.shm_bytes = shm_size, quantity(shm_size.upper().replace("B", "")
                                                            .replace("K", "Ki").replace("M", "Mi").replace("G", "Gi"))
        self.default_pod_memory = quantity(default_pod_memory)
        self.id = f"{os.getpid()}-{rand5()}"
        self.finalized: set[tuple[str, str, str]] = set()
        self.saved_logs: dict[str, Path] = {}  # container -> its output, saved when it ended or was removed
        self._runners: dict[str, _Runner] = {}
        self._containers: dict[str, RayClusterRun] = {}
        self._states: dict[str, tuple[str, int]] = {}
        self._ports: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        handler = logging.FileHandler(self.workdir / "standin.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(threadName)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        self._log_handler = handler

    # ---- lifecycle
    def start(self) -> "KubeRayStandIn":
        self._thread = threading.Thread(target=self._loop, name="kuberay-standin", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> "KubeRayStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every container it started, delete its Pod objects and RayClusters, drop its finalizers.
        Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for runner in list(self._runners.values()):
            runner.join(timeout=60)
        for runner in list(self._runners.values()):
            try:
                runner.teardown()
            except Exception:  # noqa: BLE001
                log.error("teardown of %s: %s", runner.name, traceback.format_exc())
        # anything left with this instance's label (a container whose pod start half-failed)
        out = self.podman(["ps", "-aq", "--filter", f"label={self.LABEL}={self.id}"], timeout=60)
        left = out.stdout.split()
        if left:
            self.remove_containers(left)
        for plural, ns, name in list(self.finalized):
            self.remove_finalizer(plural, ns, name)
        log.removeHandler(self._log_handler)
        self._log_handler.close()

    # ---- what tests call
    def containers(self, rayjob: str, namespace: str | None = None) -> dict[str, Any]:
        """{"head": container, "workers": [containers], "cluster": RayCluster name, "pods": {container: pod}}
        of the live cluster of a RayJob or RayService (empty when none runs)."""
        for runner in list(self._runners.values()):
            if runner.name == rayjob and (namespace is None or runner.ns == namespace) and runner.cluster:
                c = runner.cluster
                live = [s for s in c.slots if s.container]
                return {"head": c.head.container or None, "cluster": c.name,
                        "workers": [s.container for s in live if s.role == "worker"],
                        "pods": {s.container: s.pod_name for s in live}}
        return {"head": None, "workers": [], "cluster": None, "pods": {}}

    def logs(self, container: str) -> str:
        """A container's output (live, or as saved when it was removed)."""
        out = self.podman(["logs", container], timeout=60)
        if out.returncode == 0:
            return out.stdout + out.stderr
        saved = self.saved_logs.get(container)
        return saved.read_text() if saved is not None and saved.exists() else ""

    def job_logs(self, rayjob: str, namespace: str | None = None) -> str:
        """The saved driver logs of the RayJob's finished Ray jobs (all attempts, in order)."""
        pattern = f"{namespace or '*'}/{rayjob}/job-*.log"
        return "".join(p.read_text() for p in sorted((self.workdir / "logs").glob(pattern),
                                                     key=lambda p: p.stat().st_mtime))

    def dashboard_url(self, name: str, namespace: str | None = None) -> str | None:
        c = self._cluster_of(name, namespace)
        return c.dashboard if c else None

    def serve_url(self, rayservice: str, namespace: str | None = None) -> str | None:
        c = self._cluster_of(rayservice, namespace)
        return f"http://{LOCALHOST}:{c.serve_port}" if c and c.serve_port else None

    def _cluster_of(self, name: str, namespace: str | None) -> RayClusterRun | None:
        for runner in list(self._runners.values()):
            if runner.name == name and (namespace is None or runner.ns == namespace) and runner.cluster:
                return runner.cluster
        return None

    # ---- plumbing used by the runners
    def podman(self, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*self.podman_cmd, *args], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def remove_containers(self, names: list[str]) -> None:
        """`podman rm -f`, checked: podman at times stops a container and returns before removing it."""
        left = list(names)
        for attempt in range(5):
            out = self.podman(["rm", "-f", "-i", "-t", "2", *left], timeout=120)
            left = [n for n in left if self.podman(["container", "exists", n], timeout=60).returncode == 0]
            if not left:
                return
            log.warning("podman rm left %s (attempt %d): %s", left, attempt + 1, out.stderr.strip()[-500:])
            time.sleep(1)
        log.error("containers not removed: %s", left)

    def register_container(self, name: str, cluster: RayClusterRun) -> None:
        with self._lock:
            self._containers[name] = cluster
            self._states.pop(name, None)

    def forget_container(self, name: str) -> None:
        with self._lock:
            self._containers.pop(name, None)
            self._states.pop(name, None)

    def container_state(self, name: str) -> tuple[str, int] | None:
        with self._lock:
            return self._states.get(name)

    def allocate_ports(self, n: int) -> list[int]:
        with self._lock:
            while True:
                ports = free_ports(n)
                if not self._ports.intersection(ports):
                    self._ports.update(ports)
                    return ports

    def release_ports(self, ports: list[int]) -> None:
        with self._lock:
            self._ports.difference_update(ports)

    def remove_finalizer(self, plural: str, ns: str, name: str) -> None:
        try:
            obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
        except self.ApiException:
            self.finalized.discard((plural, ns, name))
            return
        fins = obj["metadata"].get("finalizers") or []
        if FINALIZER in fins:
            body = [{"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]},
                    {"op": "replace", "path": "/metadata/finalizers", "value": [f for f in fins if f != FINALIZER]}]
            try:
                self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, plural, name, body,
                                                           _content_type="application/json-patch+json")
            except self.ApiException as err:
                if err.status not in (404, 409, 422):
                    raise
                return  # a conflict: the next call retries
        self.finalized.discard((plural, ns, name))

    @staticmethod
    def expand(value: str, env: dict[str, str]) -> str:
        """Kubernetes' $(VAR) expansion ($$ escapes)."""
        def sub(m: re.Match) -> str:
            if m.group(0) == "$$":
                return "$"
            return env.get(m.group(1), m.group(0))
        return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, value)

    def _read(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str] | None:
        """A ConfigMap's or Secret's data as text (Secrets base64-decoded)."""
        try:
            if kind == "secret":
                obj = self.core.read_namespaced_secret(name, ns)
                return {k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.data or {}).items()}
            obj = self.core.read_namespaced_config_map(name, ns)
            data = dict(obj.data or {})
            data.update({k: base64.b64decode(v).decode(errors="replace") for k, v in (obj.binary_data or {}).items()})
            return data
        except self.ApiException as err:
            if err.status == 404 and optional:
                return None
            raise RuntimeError(f"{kind} {ns}/{name}: {err.status} {err.reason}") from err

    def _read_bytes(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, bytes] | None:
        try:
            if kind == "secret":
                obj = self.core.read_namespaced_secret(name, ns)
                return {k: base64.b64decode(v) for k, v in (obj.data or {}).items()}
            obj = self.core.read_namespaced_config_map(name, ns)
            data = {k: v.encode() for k, v in (obj.data or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.binary_data or {}).items()})
            return data
        except self.ApiException as err:
            if err.status == 404 and optional:
                return None
            raise RuntimeError(f"{kind} {ns}/{name}: {err.status} {err.reason}") from err

    def resolve_env(self, ns: str, pod: dict, container: dict) -> dict[str, str]:
        """envFrom, then env (later wins), with valueFrom and $(VAR) resolved as a kubelet does."""
        env: dict[str, str] = {}
        for src in container.get("envFrom") or []:
            prefix = src.get("prefix", "")
            for kind, key in (("configMap", "configMapRef"), ("secret", "secretRef")):
                if key in src:
                    data = self._read(kind.lower(), ns, src[key]["name"], bool(src[key].get("optional")))
                    for k, v in (data or {}).items():
                        env[prefix + k] = v
        meta = pod["metadata"]
        for item in container.get("env") or []:
            name = item["name"]
            if "valueFrom" not in item:
                env[name] = self.expand(str(item.get("value", "")), env)
                continue
            vf = item["valueFrom"]
            if "fieldRef" in vf:
                path = vf["fieldRef"]["fieldPath"]
                m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
                if m:
                    value = (meta.get(m.group(1)) or {}).get(m.group(2), "")
                else:
                    value = {"metadata.name": meta.get("name", ""), "metadata.namespace": ns,
                             "metadata.uid": meta.get("uid", ""), "spec.nodeName": "",
                             "spec.serviceAccountName": (pod["spec"].get("serviceAccountName") or "default"),
                             "status.hostIP": LOCALHOST, "status.podIP": LOCALHOST,
                             "status.podIPs": LOCALHOST}.get(path, "")
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind, ref = ("secret", vf["secretKeyRef"]) if "secretKeyRef" in vf else ("configmap", vf["configMapKeyRef"])
                data = self._read(kind, ns, ref["name"], bool(ref.get("optional")))
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f"{kind} {ns}/{ref['name']} has no key {ref['key']}")
                value = data[ref["key"]]
            elif "resourceFieldRef" in vf:
                res = vf["resourceFieldRef"]["resource"]
                kind, _, rname = res.partition(".")
                raw = ((container.get("resources") or {}).get(kind) or {}).get(rname)
                divisor = quantity(vf["resourceFieldRef"].get("divisor", 1))
                value = str(math.ceil(quantity(raw) / divisor)) if raw is not None else "0"
            else:
                value = ""
            env[name] = value
        return env

    def volume_args(self, ns: str, pod: dict, container: dict, pod_dir: Path) -> list[str]:
        """-v/--mount options for the container's volumeMounts (files written under pod_dir)."""
        volumes = {v["name"]: v for v in (pod["spec"].get("volumes") or [])}
        prepared: dict[str, Path | None] = {}
        args: list[str] = []
        for mount in container.get("volumeMounts") or []:
            vol = volumes.get(mount["name"])
            if vol is None:
                raise RuntimeError(f"volumeMount {mount['name']} names no volume")
            if mount["mountPath"] == "/dev/shm":
                continue  # --shm-size is the shared-mem emptyDir
            if mount["name"] not in prepared:
                prepared[mount["name"]] = self._prepare_volume(ns, vol, pod_dir / "volumes" / mount["name"])
            src = prepared[mount["name"]]
            if src is None:
                continue  # an optional ConfigMap/Secret that does not exist
            read_only = mount.get("readOnly") or "configMap" in vol or "secret" in vol
            if mount.get("subPath"):
                src = src / mount["subPath"]
                if not src.exists():
                    src.mkdir(parents=True)
            args += ["-v", f"{src}:{mount['mountPath']}" + (":ro" if read_only else "")]
        return args

    def _prepare_volume(self, ns: str, vol: dict, folder: Path) -> Path | None:
        for kind in ("configMap", "secret"):
            if kind in vol:
                src = vol[kind]
                data = self._read_bytes(kind.lower(), ns, src.get("name") or src.get("secretName"),
                                        bool(src.get("optional")))
                if data is None:
                    return None
                if folder.exists():
                    shutil.rmtree(folder)
                folder.mkdir(parents=True)
                items = src.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] not in data:
                        if src.get("optional"):
                            continue
                        raise RuntimeError(f"{kind} {src.get('name') or src.get('secretName')} has no key {item['key']}")
                    path = folder / item["path"]
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data[item["key"]])
                    path.chmod(0o644)
                folder.chmod(0o755)
                return folder
        if "emptyDir" in vol:
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)
            return folder
        if "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            if vol["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                path.mkdir(parents=True, exist_ok=True)
            return path
        if "persistentVolumeClaim" in vol:
            path = self.workdir / "pvc" / ns / vol["persistentVolumeClaim"]["claimName"]
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777)
            return path
        raise RuntimeError(f"volume {vol.get('name')}: type not emulated ({sorted(set(vol) - {'name'})})")

    # ---- the watch loop
    def _list(self, plural: str) -> list[dict]:
        if self.namespaces is None:
            return self.custom.list_cluster_custom_object(GROUP, VERSION, plural)["items"]
        items = []
        for ns in self.namespaces:
            items += self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, plural)["items"]
        return items

    def _refresh_states(self) -> None:
        out = self.podman(["ps", "-a", "--filter", f"label={self.LABEL}={self.id}", "--format", "json"], timeout=60)
        if out.returncode != 0:
            return
        try:
            rows = json.loads(out.stdout or "[]")
        except ValueError:
            return
        states = {}
        for row in rows:
            names = row.get("Names") or []
            for name in names if isinstance(names, list) else [names]:
                states[name] = ((row.get("State") or "").lower(), int(row.get("ExitCode") or 0))
        with self._lock:
            for name in list(self._containers):
                if name in states:
                    self._states[name] = states[name]
                elif name in self._states:  # it was seen and is gone (removed behind our back)
                    self._states[name] = ("removed", -1)

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._refresh_states()
                for plural, cls in (("rayjobs", RayJobRunner), ("rayservices", RayServiceRunner)):
                    for obj in self._list(plural):
                        uid = obj["metadata"]["uid"]
                        runner = self._runners.get(uid)
                        if runner is None:
                            runner = self._runners[uid] = cls(self, obj)
                            runner.start()
            except Exception:  # noqa: BLE001
                log.error("watch loop: %s", traceback.format_exc())
            self._stopping.wait(self.poll_s)
