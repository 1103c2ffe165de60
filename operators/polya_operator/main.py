"""The thin I/O layer: kopf watches PolyaRuns and their RayJobs; each event or timer tick reads the run
and its children from the API server, calls the pure `reconcile`, and writes back what it decided.

    polya-operator [--namespace NS | --all-namespaces] [--metrics-port 8080] [--image IMG]

Never imports torch: only `polya.spec`, `polya.recipe` and `polya.validation` from the data plane.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes
from kubernetes.client.rest import ApiException

from polya.recipe import PlannedStage
from polya.spec import TERMINAL_RUN_PHASES, StageStatus

from polya_operator import metrics as M
from polya_operator.children import (LABEL_RUN, RAY_GROUP, RAY_VERSION, RUN_GROUP, RUN_PLURAL, RUN_VERSION, Defaults,
                                     configmap_name, rayservice_name)
from polya_operator.reconcile import VALIDATION_FAILED, Observed, reconcile

log = logging.getLogger("polya-operator")
TIMER_S = float(os.environ.get("POLYA_OPERATOR_TIMER_S", "10"))


def env_defaults(image: str | None = None) -> Defaults:
    """Operator-wide stage defaults from the environment (the Helm chart's `stages:` values)."""
    return Defaults(
        image=image or os.environ.get("POLYA_IMAGE", Defaults.image),
        image_pull_policy=os.environ.get("POLYA_IMAGE_PULL_POLICY") or Defaults.image_pull_policy,
        image_pull_secrets=tuple(json.loads(os.environ.get("POLYA_IMAGE_PULL_SECRETS") or "[]")),
        gpu_resource=os.environ.get("POLYA_GPU_RESOURCE") or Defaults.gpu_resource,
        node_selector=json.loads(os.environ.get("POLYA_DEFAULT_NODE_SELECTOR") or "{}"),
        tolerations=tuple(json.loads(os.environ.get("POLYA_DEFAULT_TOLERATIONS") or "[]")),
    )


_defaults = env_defaults()
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()
_api: dict[str, Any] = {}


def _clients():
    with _locks_guard:  # handlers run in a thread pool: build the clients once, completely
        if not _api:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            client = kubernetes.client.ApiClient()
            _api.update(custom=kubernetes.client.CustomObjectsApi(client), core=kubernetes.client.CoreV1Api(client))
        return _api["custom"], _api["core"]


def _lock(ns: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((ns, name), threading.Lock())


def _owned(obj: dict[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in obj.get("metadata", {}).get("ownerReferences") or [])


def _read_results(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Stage results the stages wrote to `<storage>/results/` (best effort: the storage may be unreachable)."""
    from polya.artifacts import read_results

    try:
        return read_results(run["spec"]["storage"]["uri"])
    except Exception as exc:  # noqa: BLE001
        log.debug("results of %s not readable: %s", run["metadata"]["name"], exc)
        return {}


def _create(custom, core, ns: str, obj: dict[str, Any]) -> None:
    kind = obj["kind"]
    try:
        if kind == "ConfigMap":
            core.create_namespaced_config_map(ns, obj)
        else:
            group, version = obj["apiVersion"].split("/")
            custom.create_namespaced_custom_object(group, version, ns, kind.lower() + "s", obj)
        M.CHILDREN_CREATED.labels(kind).inc()
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists (a restarted operator, a lagging cache): adopt it
            raise


def _delete(custom, ns: str, kind: str, name: str) -> None:
    try:
        custom.delete_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, kind.lower() + "s", name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _event(core, run: dict[str, Any], etype: str, reason: str, message: str) -> None:
    now = datetime.now(timezone.utc)
    meta = run["metadata"]
    body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": f"{RUN_GROUP}/{RUN_VERSION}", "kind": "PolyaRun", "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": etype, "reason": reason, "message": message[:1000],
        "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        "source": {"component": "polya-operator"},
    }
    try:
        core.create_namespaced_event(meta["namespace"], body)
    except ApiException as exc:
        log.warning("event %s for %s not posted: %s", reason, meta["name"], exc.reason)


def reconcile_one(ns: str, name: str) -> float | None:
    """Read, decide, write. Returns seconds until a wanted requeue (backoff), if any."""
    custom, core = _clients()
    with _lock(ns, name), M.RECONCILE_SECONDS.time():
        try:
            run = custom.get_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                M.record_phase(ns, name, None)
                return None
            raise
        if run["metadata"].get("deletionTimestamp"):
            return None
        uid = run["metadata"]["uid"]
        jobs = custom.list_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayjobs",
                                                    label_selector=f"{LABEL_RUN}={name}")["items"]
        observed = Observed(rayjobs={j["metadata"]["name"]: j for j in jobs if _owned(j, uid)})
        try:
            core.read_namespaced_config_map(configmap_name(name), ns)
            observed.configmap = True
        except ApiException as exc:
            if exc.status != 404:
                raise
        try:
            custom.get_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, "rayservices", rayservice_name(name))
            observed.rayservice = True
        except ApiException as exc:
            if exc.status != 404:
                raise
        if any(((j.get("status") or {}).get("jobStatus") or "").upper() == "SUCCEEDED" for j in jobs):
            observed.results = _read_results(run)

        decision = reconcile(run, observed, datetime.now(timezone.utc), _defaults)
        log.debug("%s/%s: phase %s -> %s, create %s", ns, name, (run.get("status") or {}).get("phase"),
                  decision.status.get("phase"), [o["metadata"]["name"] for o in decision.create])
        for obj in decision.create:
            _create(custom, core, ns, obj)
        for kind, child in decision.delete:
            _delete(custom, ns, kind, child)
        old = run.get("status") or {}
        if decision.status != old:
            # a JSON merge patch: a field the decision no longer has (a cleared currentStage) is sent as null
            patch = {**{k: None for k in old if k not in decision.status}, **decision.status}
            custom.patch_namespaced_custom_object_status(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, name,
                                                         {"status": patch})
        for ev in decision.events:
            _event(core, run, ev.type, ev.reason, ev.message)
        _observe_duration(decision.finished)
        stages = decision.status.get("stages") or []
        M.STAGE_PROGRESS.labels(ns, name).set(sum(s["phase"] == "Succeeded" for s in stages) / max(1, len(stages)))
        M.record_phase(ns, name, decision.status.get("phase"))
        return decision.requeue_after


def _observe_duration(finished: list[StageStatus]) -> None:
    """Wall time of the stages that succeeded in this pass, labelled by stage (the arm left out)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    for st in finished:
        if st.startTime and st.finishTime:
            secs = (datetime.strptime(st.finishTime, fmt) - datetime.strptime(st.startTime, fmt)).total_seconds()
            M.STAGE_DURATION.labels(str(PlannedStage.parse(st.name).stage)).observe(secs)


def _guarded(ns: str, name: str) -> None:
    try:
        wait = reconcile_one(ns, name)
    except ApiException as exc:
        M.RECONCILE_ERRORS.labels(f"api-{exc.status}").inc()
        raise kopf.TemporaryError(f"API error {exc.status}: {exc.reason}", delay=5)
    except Exception as exc:
        M.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        raise
    if wait:
        # kopf's timer re-reconciles at least every TIMER_S; a shorter backoff is served by that tick
        log.info("%s/%s: next attempt in %.0fs", ns, name, wait)


# ------------------------------------------------------------------------------------------ handlers
@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="polya.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="polya.dev")
    settings.posting.enabled = False  # we post our own, meaningful events
    settings.watching.server_timeout = 120
    settings.execution.max_workers = 16


@kopf.on.resume(RUN_GROUP, RUN_VERSION, RUN_PLURAL, backoff=5)
@kopf.on.create(RUN_GROUP, RUN_VERSION, RUN_PLURAL, backoff=5)
@kopf.on.update(RUN_GROUP, RUN_VERSION, RUN_PLURAL, backoff=5)
def on_run(name: str, namespace: str, **_: Any) -> None:
    _guarded(namespace, name)


@kopf.timer(RUN_GROUP, RUN_VERSION, RUN_PLURAL, interval=TIMER_S, sharp=False, backoff=5)
def on_tick(name: str, namespace: str, status: dict, **_: Any) -> None:
    if (status or {}).get("phase") not in TERMINAL_RUN_PHASES:
        _guarded(namespace, name)


@kopf.on.event(RAY_GROUP, RAY_VERSION, "rayjobs", labels={LABEL_RUN: kopf.PRESENT})
def on_rayjob(body: dict, namespace: str, type: str, **_: Any) -> None:
    status = body.get("status") or {}
    over = status.get("jobStatus") or status.get("jobDeploymentStatus") == VALIDATION_FAILED
    if type in ("ADDED", "MODIFIED") and over:
        _guarded(namespace, body["metadata"]["labels"][LABEL_RUN])


@kopf.on.delete(RUN_GROUP, RUN_VERSION, RUN_PLURAL, optional=True)
def on_delete(name: str, namespace: str, **_: Any) -> None:
    M.record_phase(namespace, name, None)  # children go with the run (owner references + GC)


@kopf.on.probe(id="runs")
def _probe(**_: Any) -> int:
    return M.tracked_runs()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="polya-operator")
    scope = ap.add_mutually_exclusive_group()
    scope.add_argument("--namespace", action="append", default=None)
    scope.add_argument("--all-namespaces", action="store_true")
    ap.add_argument("--metrics-port", type=int, default=int(os.environ.get("POLYA_METRICS_PORT", "8080")))
    ap.add_argument("--metrics-host", default=os.environ.get("POLYA_METRICS_HOST", "0.0.0.0"))
    ap.add_argument("--liveness", default="http://0.0.0.0:8081/healthz")
    ap.add_argument("--image", default=None, help="default container image for stage RayJobs")
    args = ap.parse_args(argv)
    global _defaults
    _defaults = env_defaults(args.image)
    logging.basicConfig(level=os.environ.get("POLYA_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.setLevel(os.environ.get("POLYA_LOG_LEVEL", "INFO"))
    from prometheus_client import start_http_server

    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    kopf.run(clusterwide=args.all_namespaces or not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness, standalone=True)


if __name__ == "__main__":
    main()

