"""The thin I/O layer: kopf watches PolyaRuns and their RayJobs; each event or timer tick reads the run
and its children from the API server, calls the pure `reconcile`, and writes back what it decided.
PolyaSweeps likewise: a sweep's events and its child PolyaRuns' phase changes call the pure
`reconcile_sweep`, which decides the children to create and the sweep's status.

    polya-operator [--namespace NS | --all-namespaces] [--metrics-port 8080] [--image IMG]

Never imports torch: only `polya.spec`, `polya.recipe` and `polya.validation` from the data plane.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import kopf
import kubernetes
import yaml
from kubernetes.client.rest import ApiException

from polya.recipe import PlannedStage
from polya.spec import TERMINAL_RUN_PHASES, StageStatus
from polya.sweep import LABEL_SWEEP, SWEEP_PLURAL

from polya_operator import metrics as M
from polya_operator.children import (LABEL_RUN, RAY_GROUP, RAY_VERSION, RUN_GROUP, RUN_KIND, RUN_PLURAL, RUN_VERSION,
                                     Defaults, configmap_name, rayservice_name)
from polya_operator.reconcile import VALIDATION_FAILED, Observed, reconcile
from polya_operator.sweep import reconcile_sweep

log = logging.getLogger("polya-operator")
TIMER_S = float(os.environ.get("POLYA_OPERATOR_TIMER_S", "10"))
#: a running sweep's children are listed from the API server at most this often (else the watch's cache)
RELIST_S = 6 * TIMER_S
#: the finalizer kopf adds for timers and daemons (operators before 0.1.1 had a timer)
KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def env_defaults(image: str | None = None) -> Defaults:
    """Operator-wide stage defaults from the environment (the Helm chart's `stages:` values)."""
    return Defaults(
        image=image or os.environ.get("POLYA_IMAGE", Defaults.image),
        image_pull_policy=os.environ.get("POLYA_IMAGE_PULL_POLICY") or Defaults.image_pull_policy,
        image_pull_secrets=tuple(json.loads(os.environ.get("POLYA_IMAGE_PULL_SECRETS") or "[]")),
        gpu_resource=os.environ.get("POLYA_GPU_RESOURCE") or Defaults.gpu_resource,
        node_selector=json.loads(os.environ.get("POLYA_DEFAULT_NODE_SELECTOR") or "{}"),
        tolerations=tuple(json.loads(os.environ.get("POLYA_DEFAULT_TOLERATIONS") or "[]")),
        metrics_port=int(os.environ.get("POLYA_STAGE_METRICS_PORT") or Defaults.metrics_port),
        metrics_linger_s=int(os.environ.get("POLYA_STAGE_METRICS_LINGER_S") or Defaults.metrics_linger_s),
    )


_defaults = env_defaults()
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()
_api: dict[str, Any] = {}
#: reconciles run here (not in kopf's executor): at shutdown the queued ones are dropped at once
_pool = ThreadPoolExecutor(max_workers=int(os.environ.get("POLYA_OPERATOR_WORKERS", "16")),
                           thread_name_prefix="reconcile")
_stop = threading.Event()


class ChildCache:
    """What the operator knows of its children without asking the API server on every reconcile (the
    informer pattern): RayJobs and RayServices from their watch streams plus the operator's own writes,
    and each run's applied spec (its ConfigMap, written once and never changed). A LIST of RayJobs by label
    per reconcile reads every RayJob of the namespace from etcd: at 1,000 runs that made the operator
    quadratic. A stale entry costs at most a 409 (adopted) on create."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rayjobs: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (ns, run) -> name -> body
        self.rayservices: set[tuple[str, str]] = set()  # (ns, name)
        self.specs: dict[tuple[str, str], dict[str, Any]] = {}  # (ns, run uid) -> applied spec

    def job_event(self, ns: str, run: str, body: dict[str, Any], deleted: bool) -> None:
        with self._lock:
            jobs = self.rayjobs.setdefault((ns, run), {})
            if deleted:
                jobs.pop(body["metadata"]["name"], None)
            else:
                old = jobs.get(body["metadata"]["name"])
                if old is None or _rv(body) >= _rv(old):
                    jobs[body["metadata"]["name"]] = body

    def jobs_of(self, ns: str, run: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.rayjobs.get((ns, run), {}).values())

    def forget(self, ns: str, run: str, uid: str | None) -> None:
        with self._lock:
            self.rayjobs.pop((ns, run), None)
            self.specs.pop((ns, uid or ""), None)


def _rv(body: dict[str, Any]) -> int:
    try:
        return int(body["metadata"].get("resourceVersion") or 0)
    except ValueError:
        return 0


_cache = ChildCache()


def _clients():
    with _locks_guard:  # handlers run in a thread pool: build the clients once, completely
        if not _api:
            try:
                kubernetes.config.load_incluster_config()
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()
            conf = kubernetes.client.Configuration.get_default_copy()
            conf.connection_pool_maxsize = _pool._max_workers + 4  # one keep-alive connection per worker
            client = kubernetes.client.ApiClient(conf)
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


def _lease_lookup(run: dict[str, Any]):
    """(stage, key) -> the other run holding a live lease on that artifact (best effort, object stores only,
    as `_cached_lookup`: a stage that finds the lease itself waits on it in its RayJob)."""
    from polya import storage
    from polya.lease import holder

    where = run["spec"]["storage"]
    root = where.get("artifacts") or where["uri"]
    if not storage.is_remote(root):
        return lambda stage, key: None

    def lookup(stage: str, key: str) -> str | None:
        from polya.artifacts import ArtifactStore

        try:
            return holder(ArtifactStore(root).uri, stage, key, unless=run["metadata"]["name"])
        except Exception as exc:  # noqa: BLE001
            log.debug("lease %s/%s of %s not checked: %s", stage, key, run["metadata"]["name"], exc)
            return None
    return lookup


def _cached_lookup(run: dict[str, Any]):
    """(stage, key) -> {"artifactUri", "figures"} when the artifact's manifest is in the run's storage (best
    effort: an unreachable store reuses nothing, the stage's RayJob then finds out for itself). Only object
    stores: a local path or file:// names a volume of the stage pods, not a folder of the operator's."""
    from polya import storage

    if not storage.is_remote(run["spec"]["storage"].get("artifacts") or run["spec"]["storage"]["uri"]):
        return lambda stage, key: None

    def lookup(stage: str, key: str) -> dict[str, Any] | None:
        from polya.artifacts import ArtifactStore

        try:
            where = run["spec"]["storage"]
            art = ArtifactStore(where.get("artifacts") or where["uri"]).artifact(stage, key)
            if not art.exists():
                return None
            return {"artifactUri": art.uri, "figures": art.manifest().get("figures") or {}}
        except Exception as exc:  # noqa: BLE001
            log.debug("artifact %s/%s of %s not checked: %s", stage, key, run["metadata"]["name"], exc)
            return None
    return lookup


def _create(custom, core, ns: str, obj: dict[str, Any]) -> bool:
    """Create ``obj``; False when it existed already (409: adopted, or a namesake waiting for GC)."""
    kind = obj["kind"]
    run = obj["metadata"]["labels"][LABEL_RUN]
    try:
        if kind == "ConfigMap":
            core.create_namespaced_config_map(ns, obj)
        else:
            group, version = obj["apiVersion"].split("/")
            made = custom.create_namespaced_custom_object(group, version, ns, kind.lower() + "s", obj)
            if kind == "RayJob":
                _cache.job_event(ns, run, made, deleted=False)
            elif kind == "RayService":
                _cache.rayservices.add((ns, obj["metadata"]["name"]))
        M.CHILDREN_CREATED.labels(kind).inc()
        return True
    except ApiException as exc:
        if exc.status != 409:  # 409: it exists (a restarted operator, a lagging cache): adopt it
            raise
        if kind == "RayService":
            _cache.rayservices.add((ns, obj["metadata"]["name"]))
        return False


def _delete(custom, ns: str, kind: str, name: str) -> None:
    try:
        custom.delete_namespaced_custom_object(RAY_GROUP, RAY_VERSION, ns, kind.lower() + "s", name)
    except ApiException as exc:
        if exc.status != 404:
            raise
    if kind == "RayService":
        _cache.rayservices.discard((ns, name))


def _event(core, run: dict[str, Any], etype: str, reason: str, message: str) -> None:
    """An Event about ``run`` (a PolyaRun, or a PolyaSweep: its own apiVersion and kind)."""
    now = datetime.now(timezone.utc)
    meta = run["metadata"]
    body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": run.get("apiVersion", f"{RUN_GROUP}/{RUN_VERSION}"),
                           "kind": run.get("kind", "PolyaRun"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": etype, "reason": reason, "message": message[:1000],
        "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
        "source": {"component": "polya-operator"},
    }
    try:
        core.create_namespaced_event(meta["namespace"], body)
    except ApiException as exc:
        log.warning("event %s for %s not posted: %s", reason, meta["name"], exc.reason)


def _applied_spec(core, ns: str, run: dict[str, Any]) -> dict[str, Any] | None:
    """The spec in the run's ConfigMap (None when there is none yet), read once per run."""
    key = (ns, run["metadata"]["uid"])
    if key in _cache.specs:
        return _cache.specs[key]
    try:
        cm = core.read_namespaced_config_map(configmap_name(run["metadata"]["name"]), ns)
    except ApiException as exc:
        if exc.status != 404:
            raise
        return None
    if not any(ref.uid == run["metadata"]["uid"] for ref in (cm.metadata.owner_references or [])):
        return None  # a deleted run's of the same name, not yet garbage-collected: not this run's spec
    spec = (yaml.safe_load((cm.data or {}).get("run.yaml") or "{}") or {}).get("spec") or {}
    _cache.specs[key] = spec
    return spec


def _strip_legacy_finalizer(custom, ns: str, run: dict[str, Any]) -> None:
    """Operators before 0.1.1 ran a kopf timer, which made kopf put its finalizer on every run (kopf issue
    1074): such a run could not be deleted once the operator was gone. This operator adds none; it takes
    the old one off, so deleting a run never waits on the operator."""
    finalizers = run["metadata"].get("finalizers") or []
    if KOPF_FINALIZER in finalizers:
        kept = [f for f in finalizers if f != KOPF_FINALIZER]
        custom.patch_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, run["metadata"]["name"],
                                              {"metadata": {"finalizers": kept or None}})


def reconcile_one(ns: str, name: str) -> float | None:
    """Read, decide, write. Returns seconds until a wanted requeue (backoff), if any."""
    custom, core = _clients()
    with _lock(ns, name), M.RECONCILE_SECONDS.time():
        try:
            run = custom.get_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                M.record_phase(ns, name, None)
                _cache.forget(ns, name, None)
                _scheduler.track(ns, name, False)
                return None
            raise
        _strip_legacy_finalizer(custom, ns, run)
        if run["metadata"].get("deletionTimestamp"):
            return None
        uid = run["metadata"]["uid"]
        jobs = _cache.jobs_of(ns, name)
        observed = Observed(rayjobs={j["metadata"]["name"]: j for j in jobs if _owned(j, uid)})
        observed.applied_spec = _applied_spec(core, ns, run)
        observed.configmap = observed.applied_spec is not None
        observed.rayservice = (ns, rayservice_name(name)) in _cache.rayservices
        observed.cached = _cached_lookup(run)
        observed.leased = _lease_lookup(run)
        if any(((j.get("status") or {}).get("jobStatus") or "").upper() == "SUCCEEDED" for j in jobs):
            observed.results = _read_results(run)

        decision = reconcile(run, observed, datetime.now(timezone.utc), _defaults)
        log.debug("%s/%s: phase %s -> %s, create %s", ns, name, (run.get("status") or {}).get("phase"),
                  decision.status.get("phase"), [o["metadata"]["name"] for o in decision.create])
        for obj in decision.create:
            if _create(custom, core, ns, obj) and obj["kind"] == "ConfigMap":
                _cache.specs[(ns, uid)] = run["spec"]
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
        phase = decision.status.get("phase")
        M.record_phase(ns, name, phase)
        _scheduler.track(ns, name, phase not in TERMINAL_RUN_PHASES, decision.requeue_after)
        return decision.requeue_after


def _observe_duration(finished: list[StageStatus]) -> None:
    """Wall time of the stages that succeeded in this pass, labelled by stage (the arm left out)."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    for st in finished:
        if st.startTime and st.finishTime:
            secs = (datetime.strptime(st.finishTime, fmt) - datetime.strptime(st.startTime, fmt)).total_seconds()
            M.STAGE_DURATION.labels(str(PlannedStage.parse(st.name).stage)).observe(secs)


def _guarded(ns: str, name: str) -> None:
    if _stop.is_set():
        return
    try:
        wait = reconcile_one(ns, name)
    except ApiException as exc:
        M.RECONCILE_ERRORS.labels(f"api-{exc.status}").inc()
        log.warning("%s/%s: API error %s: %s (retrying)", ns, name, exc.status, exc.reason)
        _scheduler.track(ns, name, True, 5.0)
        return
    except Exception as exc:  # noqa: BLE001 - logged and retried; one run's bug never stops the others
        M.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        log.exception("%s/%s: reconcile failed (retrying)", ns, name)
        _scheduler.track(ns, name, True, 30.0)
        return
    if wait:
        log.info("%s/%s: next attempt in %.0fs", ns, name, wait)


# -------------------------------------------------------------------------------------------- sweeps
class SweepCache:
    """Each sweep's child PolyaRuns (those labelled with it) from the PolyaRun watch and the operator's own
    creates, so a sweep's reconcile rarely lists: only once every ``RELIST_S`` (`refresh`), which corrects
    what a missed watch event left behind. A stale entry costs at most a 409 on create (then read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.children: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (ns, sweep) -> name -> body
        self.listed: dict[tuple[str, str], float] = {}  # (ns, sweep) -> monotonic time of the last list
        self.gone: dict[tuple[str, str], dict[str, int]] = {}  # (ns, sweep) -> deleted child -> its last rv

    def child_event(self, ns: str, body: dict[str, Any], deleted: bool) -> bool:
        """Record a watch event; True when what the sweep's status reads changed (existence, phase, spec)."""
        meta = body["metadata"]
        with self._lock:
            key = (ns, meta["labels"][LABEL_SWEEP])
            kids = self.children.setdefault(key, {})
            old = kids.get(meta["name"])
            if deleted:  # remembered, so that a list read before the deletion does not bring it back
                self.gone.setdefault(key, {})[meta["name"]] = _rv(body)
                return kids.pop(meta["name"], None) is not None
            if old is not None and _rv(body) < _rv(old):
                return False
            kids[meta["name"]] = body
            return old is None or _digest(old) != _digest(body)

    def of(self, ns: str, sweep: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self.children.get((ns, sweep), {}))

    def forget(self, ns: str, sweep: str) -> None:
        with self._lock:
            self.children.pop((ns, sweep), None)
            self.listed.pop((ns, sweep), None)
            self.gone.pop((ns, sweep), None)

    def stale(self, ns: str, sweep: str, max_age: float) -> bool:
        """True when the sweep's children were last listed from the API server over ``max_age`` s ago (or never)."""
        with self._lock:
            return time.monotonic() - self.listed.get((ns, sweep), float("-inf")) > max_age

    def refresh(self, ns: str, sweep: str, items: list[dict[str, Any]]) -> None:
        """Replace the sweep's children with a list read from the API server (the resync behind a missed watch
        event): a child the list lacks is gone, a cached body newer than the listed one is kept, and a listed
        child the watch has since seen deleted (the list was read before) stays gone."""
        with self._lock:
            old, gone = self.children.get((ns, sweep), {}), self.gone.get((ns, sweep), {})
            fresh = {}
            for body in items:
                name = body["metadata"]["name"]
                if name in gone and _rv(body) <= gone[name]:
                    continue
                fresh[name] = old[name] if name in old and _rv(old[name]) > _rv(body) else body
            self.children[(ns, sweep)] = fresh
            self.listed[(ns, sweep)] = time.monotonic()


def _digest(body: dict[str, Any]) -> tuple[Any, ...]:
    meta = body["metadata"]
    return meta.get("uid"), meta.get("generation"), (body.get("status") or {}).get("phase")


_sweeps = SweepCache()


def _create_child(custom, ns: str, obj: dict[str, Any]) -> dict[str, Any] | None:
    """Create a sweep's child PolyaRun; on 409 return the PolyaRun that has its name (None: created)."""
    try:
        made = custom.create_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, obj)
    except ApiException as exc:
        if exc.status != 409:
            raise
        return custom.get_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL, obj["metadata"]["name"])
    M.CHILDREN_CREATED.labels(RUN_KIND).inc()
    _sweeps.child_event(ns, made, deleted=False)
    return None


def reconcile_sweep_one(ns: str, name: str) -> None:
    """Read the sweep, decide from its cached children, create the missing ones, write its status."""
    custom, core = _clients()
    with _lock(ns, f"{SWEEP_PLURAL}/{name}"):
        try:
            sweep = custom.get_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, SWEEP_PLURAL, name)
        except ApiException as exc:
            if exc.status == 404:
                _sweeps.forget(ns, name)
                _scheduler.track(ns, name, False, kind=SWEEP)
                M.record_sweep(ns, name, None)
                return
            raise
        if sweep["metadata"].get("deletionTimestamp"):
            return
        if _sweeps.stale(ns, name, RELIST_S):
            listed = custom.list_namespaced_custom_object(RUN_GROUP, RUN_VERSION, ns, RUN_PLURAL,
                                                          label_selector=f"{LABEL_SWEEP}={name}")
            _sweeps.refresh(ns, name, listed.get("items") or [])
        decision = reconcile_sweep(sweep, _sweeps.of(ns, name))
        found = {}  # namesakes a create ran into (a lagging cache, or a PolyaRun the sweep does not own)
        for obj in decision.create:
            there = _create_child(custom, ns, obj)
            if there is not None:
                found[there["metadata"]["name"]] = there
                if (there["metadata"].get("labels") or {}).get(LABEL_SWEEP) == name:
                    _sweeps.child_event(ns, there, deleted=False)
        if found:  # decide the status again with what is really there
            again = reconcile_sweep(sweep, {**_sweeps.of(ns, name), **found})
            decision.status, decision.blocked = again.status, again.blocked
        old = sweep.get("status") or {}
        if decision.status != old:
            patch = {**{k: None for k in old if k not in decision.status}, **decision.status}
            custom.patch_namespaced_custom_object_status(RUN_GROUP, RUN_VERSION, ns, SWEEP_PLURAL, name,
                                                         {"status": patch})
        for ev in decision.events:
            _event(core, sweep, ev.type, ev.reason, ev.message)
        M.record_sweep(ns, name, decision.status)
        # while a child may still change, look again every TIMER_S (a safety net for a missed child event, as
        # for runs; a Failed sweep's other children run on; a Suspended one waits for an edit, an event); a
        # namesake the sweep does not own may go away (garbage collection): look again later too
        running = decision.status.get("phase") != "Suspended" and any(
            c.get("phase") not in TERMINAL_RUN_PHASES for c in decision.status.get("children") or [])
        _scheduler.track(ns, name, bool(decision.blocked) or running, kind=SWEEP)


def _guarded_sweep(ns: str, name: str) -> None:
    if _stop.is_set():
        return
    try:
        reconcile_sweep_one(ns, name)
    except ApiException as exc:
        M.RECONCILE_ERRORS.labels(f"api-{exc.status}").inc()
        log.warning("sweep %s/%s: API error %s: %s (retrying)", ns, name, exc.status, exc.reason)
        _scheduler.track(ns, name, True, 5.0, kind=SWEEP)
    except Exception as exc:  # noqa: BLE001 - logged and retried; one sweep's bug never stops the others
        M.RECONCILE_ERRORS.labels(type(exc).__name__).inc()
        log.exception("sweep %s/%s: reconcile failed (retrying)", ns, name)
        _scheduler.track(ns, name, True, 30.0, kind=SWEEP)


#: what a queued reconcile is of (the scheduler's and the queue's keys are (kind, namespace, name))
RUN, SWEEP = "run", "sweep"


class Scheduler:
    """Re-reconciles runs that are not finished: at a decided time (a retry's backoff) and otherwise every
    ``TIMER_S`` (a safety net for a missed watch event); and sweeps still running or whose last reconcile
    asked for a retry.
    A plain thread, not a kopf timer: kopf puts its finalizer on every object a timer watches (kopf issue
    1074), so a run could not be deleted without the operator."""

    def __init__(self) -> None:
        self._due: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def track(self, ns: str, name: str, active: bool, after: float | None = None, kind: str = RUN) -> None:
        key = (kind, ns, name)
        with self._lock:
            if not active:
                self._due.pop(key, None)
            else:  # the earlier of what is already wanted and what this asks for
                at = time.monotonic() + min(after or TIMER_S, TIMER_S)
                self._due[key] = min(at, self._due.get(key, at))

    def loop(self) -> None:
        while not _stop.wait(min(1.0, TIMER_S)):
            now = time.monotonic()
            with self._lock:
                due = [key for key, at in self._due.items() if at <= now]
                for key in due:
                    self._due[key] = now + TIMER_S  # until the reconcile decides otherwise
            for kind, ns, name in due:
                _submit(ns, name, kind)


_scheduler = Scheduler()
_queued: set[tuple[str, str, str]] = set()
_queued_guard = threading.Lock()


def _submit(ns: str, name: str, kind: str = RUN) -> None:
    """Queue one reconcile of a run (or a sweep), unless one is already queued (a burst of events needs one
    pass)."""
    key = (kind, ns, name)
    with _queued_guard:
        if key in _queued or _stop.is_set():
            return
        _queued.add(key)

    def work() -> None:
        with _queued_guard:
            _queued.discard(key)
        (_guarded_sweep if kind == SWEEP else _guarded)(ns, name)

    try:
        _pool.submit(work)
    except RuntimeError:  # the pool is shut down: the operator is stopping
        pass


# ------------------------------------------------------------------------------------------ handlers
@kopf.on.startup()
def _configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="polya.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="polya.dev")
    settings.posting.enabled = False  # we post our own, meaningful events
    settings.watching.server_timeout = 120
    settings.execution.max_workers = 4  # kopf's own sync work is tiny: reconciles run in _pool
    threading.Thread(target=_scheduler.loop, name="resync", daemon=True).start()


@kopf.on.cleanup()
def _shutdown(**_: Any) -> None:
    """SIGTERM: queued reconciles are dropped (a restarted operator redoes them from the API server's
    state), in-flight ones finish (each is a handful of API calls)."""
    _stop.set()
    _pool.shutdown(wait=False, cancel_futures=True)


@kopf.on.event(RUN_GROUP, RUN_VERSION, RUN_PLURAL)
def on_run(body: dict, type: str | None, namespace: str, name: str, **_: Any) -> None:
    """Watch events of PolyaRuns (no kopf handler state, no finalizer). A new run, one seen at startup,
    a spec edit (generation ahead of status.observedGeneration) or a deletion gets a reconcile; the
    status patches of the operator's own reconciles do not."""
    if type == "DELETED":
        M.record_phase(namespace, name, None)  # children go with the run (owner references + GC)
        _scheduler.track(namespace, name, False)
        _cache.forget(namespace, name, body["metadata"].get("uid"))
        return
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    fresh = type in (None, "ADDED") or meta.get("generation") != status.get("observedGeneration")
    if fresh or KOPF_FINALIZER in (meta.get("finalizers") or []):
        _submit(namespace, name)
    elif status.get("phase") not in TERMINAL_RUN_PHASES:
        _scheduler.track(namespace, name, True)


@kopf.on.event(RAY_GROUP, RAY_VERSION, "rayjobs", labels={LABEL_RUN: kopf.PRESENT})
def on_rayjob(body: dict, namespace: str, type: str | None, **_: Any) -> None:
    run = body["metadata"]["labels"][LABEL_RUN]
    _cache.job_event(namespace, run, body, deleted=type == "DELETED")
    status = body.get("status") or {}
    over = status.get("jobStatus") or status.get("jobDeploymentStatus") in (VALIDATION_FAILED, "Suspended", "Failed")
    if type in ("ADDED", "MODIFIED", None) and over or type == "DELETED":
        _submit(namespace, run)


@kopf.on.event(RAY_GROUP, RAY_VERSION, "rayservices", labels={LABEL_RUN: kopf.PRESENT})
def on_rayservice(body: dict, namespace: str, type: str | None, **_: Any) -> None:
    key = (namespace, body["metadata"]["name"])
    if type == "DELETED":
        _cache.rayservices.discard(key)
    else:
        _cache.rayservices.add(key)


@kopf.on.event(RUN_GROUP, RUN_VERSION, SWEEP_PLURAL)
def on_sweep(body: dict, type: str | None, namespace: str, name: str, **_: Any) -> None:
    """A new sweep, one seen at startup or a spec edit gets a reconcile (not the operator's status patches);
    a deleted one's children go with it (owner references + GC)."""
    if type == "DELETED":
        _sweeps.forget(namespace, name)
        _scheduler.track(namespace, name, False, kind=SWEEP)
        M.record_sweep(namespace, name, None)
        return
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    if type in (None, "ADDED") or meta.get("generation") != status.get("observedGeneration"):
        _submit(namespace, name, SWEEP)


@kopf.on.event(RUN_GROUP, RUN_VERSION, RUN_PLURAL, labels={LABEL_SWEEP: kopf.PRESENT})
def on_sweep_child(body: dict, type: str | None, namespace: str, **_: Any) -> None:
    """A sweep's child PolyaRun (it is also a run, reconciled by `on_run`): its sweep's status follows its
    phase, and a deleted child is created again."""
    if _sweeps.child_event(namespace, body, deleted=type == "DELETED"):
        _submit(namespace, body["metadata"]["labels"][LABEL_SWEEP], SWEEP)


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

    M.prime()
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_host)
    kopf.run(clusterwide=args.all_namespaces or not args.namespace, namespaces=args.namespace or (),
             liveness_endpoint=args.liveness, standalone=True)


if __name__ == "__main__":
    main()

