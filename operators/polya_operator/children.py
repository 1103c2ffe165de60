"""The Kubernetes objects a PolyaRun owns, built as plain dicts (pure; no API calls).

* ``<run>-spec`` ConfigMap: the run's manifest (``run.yaml``) that every stage's RayJob mounts.
* ``<run>-<arm>-<stage>-<attempt>`` RayJob per stage attempt: its entrypoint is exactly the command the
  embedded runner calls (``polya stage NAME --spec /etc/polya/run.yaml --arm ARM``).
* ``<run>-serve`` RayService when ``evaluation.serve`` is true: the rollout and reward-model apps.

Names are deterministic, so a restarted operator finds (adopts) what exists instead of duplicating it.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import yaml

from polya.recipe import STAGES, Stage
from polya.spec import RESERVED_MOUNT, RESERVED_VOLUME, STAGE_METRICS_PORT, STAGE_METRICS_PORT_NAME, PolyaRunSpec

RUN_GROUP, RUN_VERSION, RUN_PLURAL, RUN_KIND = "polya.dev", "v1alpha1", "polyaruns", "PolyaRun"
RAY_GROUP, RAY_VERSION = "ray.io", "v1"
LABEL_RUN = "polya.dev/run"
LABEL_STEP = "polya.dev/step"
LABEL_ATTEMPT = "polya.dev/attempt"
SPEC_MOUNT = RESERVED_MOUNT  # the run's manifest, from the <run>-spec ConfigMap


@dataclass(frozen=True)
class Defaults:
    """Operator-wide defaults (flags / Helm values); a run's `spec.cluster` overrides them."""

    image: str = "ghcr.io/polya-dev/polya:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()  # Secret names in each run's namespace
    gpu_resource: str = "nvidia.com/gpu"
    head_cpu: str = "2"
    head_memory: str = "8Gi"
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[dict[str, Any], ...] = ()
    ttl_seconds_after_finished: int = 600
    metrics_port: int = STAGE_METRICS_PORT  # the stage driver's exporter on the head pod (0: none)
    metrics_linger_s: int = 30  # it keeps serving this long after the stage, for a last scrape


#: KubeRay refuses a RayJob (ValidationFailed) whose name is longer: it appends "-<5 chars>" for the
#: RayCluster and "-head-svc" for its Service, which must stay within 63
MAX_RAYJOB_NAME = 47
#: the Kueue label that hands a RayJob to a LocalQueue (Kueue unsuspends it when the gang fits)
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


def child_name(run_name: str, arm: str, stage: str, attempt: int) -> str:
    """``<run>-<arm>-<stage>-<attempt>`` when that fits KubeRay's 47 characters, else the longest prefix
    of it that leaves room for ``-<6 hex of sha256(full name)>`` (deterministic, so a restarted operator
    adopts it; the step and attempt are in the labels and the run's status)."""
    full = f"{run_name}-{arm}-{stage}-{attempt}"
    if len(full) <= MAX_RAYJOB_NAME:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    return f"{full[:MAX_RAYJOB_NAME - 7].rstrip('-')}-{digest}"


def configmap_name(run_name: str) -> str:
    return f"{run_name}-spec"


def rayservice_name(run_name: str) -> str:
    return f"{run_name}-serve"


def owner_reference(run: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": f"{RUN_GROUP}/{RUN_VERSION}", "kind": RUN_KIND, "name": run["metadata"]["name"],
            "uid": run["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _meta(run: dict[str, Any], name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": run["metadata"].get("namespace", "default"),
        "labels": {LABEL_RUN: run["metadata"]["name"], "app.kubernetes.io/managed-by": "polya-operator",
                   **(extra_labels or {})},
        "ownerReferences": [owner_reference(run)],
    }


def spec_configmap(run: dict[str, Any]) -> dict[str, Any]:
    manifest = {"apiVersion": run["apiVersion"], "kind": run["kind"],
                "metadata": {"name": run["metadata"]["name"]}, "spec": run["spec"]}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(run, configmap_name(run["metadata"]["name"])),
            "data": {"run.yaml": yaml.safe_dump(manifest, sort_keys=False)}}


def _container(spec: PolyaRunSpec, defaults: Defaults, cpu: str, memory: str, gpus: int,
               head: bool = False) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": cpu, "memory": memory}
    if gpus:
        limits[spec.cluster.gpuResource or defaults.gpu_resource] = gpus
    container = {
        "name": "ray",
        "image": spec.cluster.image or defaults.image,
        "imagePullPolicy": defaults.image_pull_policy,
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [{"name": RESERVED_VOLUME, "mountPath": SPEC_MOUNT, "readOnly": True}]
        + [m.model_dump(exclude_none=True) for m in spec.cluster.volumeMounts],
        **_environment(spec),
    }
    if head and defaults.metrics_port:
        # the stage's driver (`polya stage`, run on the head) exports here while the stage runs; the chart's
        # PodMonitor scrapes the port by name (KubeRay's own "metrics" port, 8080, is Ray's)
        container["ports"] = [{"name": STAGE_METRICS_PORT_NAME, "containerPort": defaults.metrics_port, "protocol": "TCP"}]
        container["env"] = [{"name": "POLYA_METRICS_PORT", "value": str(defaults.metrics_port)},
                            {"name": "POLYA_METRICS_LINGER_S", "value": str(defaults.metrics_linger_s)},
                            *container.get("env", [])]
    return container


def _environment(spec: PolyaRunSpec) -> dict[str, Any]:
    """The run's `cluster.env` / `cluster.envFrom` for the Ray container (values from Secrets stay there)."""
    out: dict[str, Any] = {}
    if spec.cluster.env:
        out["env"] = [e.model_dump(exclude_none=True) for e in spec.cluster.env]
    if spec.cluster.envFrom:
        out["envFrom"] = [e.model_dump(exclude_none=True) for e in spec.cluster.envFrom]
    return out


def _pod_template(run: dict[str, Any], spec: PolyaRunSpec, defaults: Defaults, cpu: str, memory: str,
                  gpus: int, head: bool = False) -> dict[str, Any]:
    tolerations = [t.model_dump(exclude_none=True) for t in spec.cluster.tolerations] or list(defaults.tolerations)
    pod: dict[str, Any] = {
        "containers": [_container(spec, defaults, cpu, memory, gpus, head)],
        "volumes": [{"name": RESERVED_VOLUME, "configMap": {"name": configmap_name(run["metadata"]["name"])}}]
        + [v.model_dump(exclude_none=True) for v in spec.cluster.volumes],
    }
    if spec.cluster.nodeSelector or defaults.node_selector:
        pod["nodeSelector"] = dict(spec.cluster.nodeSelector or defaults.node_selector)
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.cluster.serviceAccountName:
        pod["serviceAccountName"] = spec.cluster.serviceAccountName
    secrets = list(dict.fromkeys([*defaults.image_pull_secrets, *spec.cluster.imagePullSecrets]))
    if secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in secrets]
    # KubeRay copies template labels to the pods: the PodMonitor selects stage pods by the run's label
    return {"metadata": {"labels": {LABEL_RUN: run["metadata"]["name"]}}, "spec": pod}


def ray_cluster_spec(run: dict[str, Any], spec: PolyaRunSpec, stage: Stage | str,
                     defaults: Defaults, also: tuple[Stage, ...] = ()) -> dict[str, Any]:
    """A Ray cluster sized for ``stage`` (plus the actors of the stages in ``also``, which share it): one
    worker pod per GPU actor the stage table says they need (rounded up to whole GPUs, the largest actor
    sizing every pod), or one CPU worker when none needs a GPU."""
    needs = [STAGES[Stage(s)].accelerators(spec) for s in (stage, *also)]
    per_actor = max(g for _, g in needs)
    gpus_per_pod = math.ceil(per_actor) if per_actor else 0
    workers = sum(n for n, g in needs if g) if gpus_per_pod else 1
    cpu = f"{spec.cluster.cpusPerWorker:g}"
    return {
        "rayVersion": spec.cluster.rayVersion,
        "headGroupSpec": {
            # the head runs the driver and Serve's controller, no work: replicas and learners go to workers
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0", "num-gpus": "0"},
            "template": _pod_template(run, spec, defaults, spec.cluster.headCpu or defaults.head_cpu,
                                      spec.cluster.headMemory or defaults.head_memory, 0, head=True),
        },
        "workerGroupSpecs": [{
            "groupName": "gpu" if gpus_per_pod else "cpu",
            "replicas": workers, "minReplicas": workers, "maxReplicas": workers,
            "rayStartParams": {},
            "template": _pod_template(run, spec, defaults, cpu, spec.cluster.memoryPerWorker, gpus_per_pod),
        }],
    }


def rayjob(run: dict[str, Any], spec: PolyaRunSpec, arm: str, stage: str, attempt: int,
           defaults: Defaults) -> dict[str, Any]:
    name = child_name(run["metadata"]["name"], arm, stage, attempt)
    labels = {LABEL_STEP: f"{arm}.{stage}", LABEL_ATTEMPT: str(attempt)}
    job_spec: dict[str, Any] = {
        "entrypoint": f"polya stage {stage} --spec {SPEC_MOUNT}/run.yaml --arm {arm}",
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": defaults.ttl_seconds_after_finished,
        "backoffLimit": 0,  # retries are the operator's (with backoff and a per-stage limit)
        "rayClusterSpec": ray_cluster_spec(run, spec, stage, defaults),
    }
    if spec.cluster.activeDeadlineSeconds:
        job_spec["activeDeadlineSeconds"] = spec.cluster.activeDeadlineSeconds
    if spec.cluster.queueName:
        # Kueue's documented contract: the queue label and a RayJob created suspended; Kueue admits the whole
        # Ray cluster at once (gang) by setting suspend to false
        labels[KUEUE_QUEUE_LABEL] = spec.cluster.queueName
        job_spec["suspend"] = True
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayJob",
        "metadata": _meta(run, name, labels),
        "spec": job_spec,
    }


def rayservice(run: dict[str, Any], spec: PolyaRunSpec, defaults: Defaults, model: str | None) -> dict[str, Any]:
    """The run's endpoints: the rollout app serves ``model`` (the run's final model: the main arm's last
    trained model in storage; the base model when the run trains none) and the reward app the filter's
    reward model, on one Ray cluster sized for both."""
    name = rayservice_name(run["metadata"]["name"])
    rollout_args = {"spec": f"{SPEC_MOUNT}/run.yaml", **({"model": model} if model else {})}
    serve_config = {
        "applications": [
            {"name": "rollout", "route_prefix": "/", "import_path": "polya.serve.entry:rollout_app",
             "args": rollout_args},
            {"name": "reward", "route_prefix": "/score", "import_path": "polya.serve.entry:reward_app",
             "args": {"spec": f"{SPEC_MOUNT}/run.yaml"}},
        ]
    }
    return {
        "apiVersion": f"{RAY_GROUP}/{RAY_VERSION}",
        "kind": "RayService",
        "metadata": _meta(run, name),
        "spec": {"serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
                 "rayClusterConfig": ray_cluster_spec(run, spec, Stage.EVALUATE, defaults, also=(Stage.FILTER,))},
    }
