"""Start local Ray + Serve, deploy the rollout and reward-model apps, and call them with retries."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

log = logging.getLogger(__name__)

ROLLOUT_APP = "rollout"
REWARD_APP = "reward"


def ensure_ray(num_cpus: int | None = None, dashboard: bool = True) -> None:
    """A local Ray instance (or the cluster's, inside a RayJob where RAY_ADDRESS is set)."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on by default
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    ray.init(num_cpus=num_cpus, include_dashboard=dashboard, log_to_driver=False, ignore_reinit_error=True,
             configure_logging=False)


def ensure_serve(http_port: int = 8000, host: str = "127.0.0.1") -> None:
    from ray import serve

    serve.start(http_options={"host": host, "port": http_port})


def _actor_options(gpus: float) -> dict[str, Any]:
    # on CPU the engine's own threads use the cores: a replica reserves none, so 2-core machines can
    # hold rollout, reward and learner actors at once
    return {"num_cpus": 0, "num_gpus": gpus} if gpus else {"num_cpus": 0}


def start_rollout(
    engine_cfg: dict[str, Any],
    replicas: int = 1,
    gpus_per_replica: float = 0,
    http_port: int = 8000,
    max_tokens_limit: int = 4096,
    name: str = ROLLOUT_APP,
    route_prefix: str = "/",
):
    """Deploy (or update) the rollout app and return its handle once every replica is up."""
    from ray import serve

    from polya.serve.rollout import RolloutServer

    ensure_ray()
    ensure_serve(http_port)
    app = RolloutServer.options(num_replicas=replicas, ray_actor_options=_actor_options(gpus_per_replica)).bind(
        engine_cfg, max_tokens_limit=max_tokens_limit
    )
    return serve.run(app, name=name, route_prefix=route_prefix)


def start_reward(scorer_cfg: dict[str, Any], replicas: int = 1, gpus_per_replica: float = 0, http_port: int = 8000,
                 name: str = REWARD_APP):
    from ray import serve

    from polya.serve.reward import RewardServer

    ensure_ray()
    ensure_serve(http_port)
    app = RewardServer.options(num_replicas=replicas, ray_actor_options=_actor_options(gpus_per_replica)).bind(scorer_cfg)
    return serve.run(app, name=name, route_prefix="/score")


def _retryable(exc: BaseException) -> bool:
    import ray.exceptions as rex

    from polya.engines.base import TokenLimitError

    if isinstance(exc, (TokenLimitError, ValueError)):
        return False  # the request itself is wrong: retrying cannot help
    return isinstance(exc, (rex.RayActorError, rex.ActorUnavailableError, rex.RaySystemError, asyncio.TimeoutError,
                            ConnectionError)) or type(exc).__name__ in {"DeploymentUnavailableError", "BackPressureError"}


async def call_with_retry(method, *args, retries: int = 4, backoff_s: float = 2.0, timeout_s: float | None = None):
    """``await method.remote(*args)``; a dead replica is replaced by Serve, so retry the whole batch."""
    for attempt in range(retries + 1):
        try:
            resp = method.remote(*args)
            return await (asyncio.wait_for(resp, timeout_s) if timeout_s else resp)
        except Exception as exc:  # noqa: BLE001 - classified below
            if attempt == retries or not _retryable(exc):
                raise
            log.warning("rollout call failed (%s: %s); retry %d/%d", type(exc).__name__, exc, attempt + 1, retries)
            await asyncio.sleep(backoff_s * (attempt + 1))


async def broadcast_weights(handle, app_name: str, blob: bytes, version: int, timeout_s: float = 300) -> int:
    """Send weights ``version`` to every running replica of the rollout app; returns how many loaded it.

    Serve routes a call to one replica, so the call is repeated until every replica id has answered
    at ``version`` (replicas already there skip the load). The blob goes to the object store once."""
    import time

    import ray

    ref = ray.put(blob)
    deadline = time.monotonic() + timeout_s
    seen: set[str] = set()
    loaded = 0
    while True:
        running = running_replicas(app_name)
        if running and len(seen) >= running:
            return loaded
        if time.monotonic() > deadline:
            raise TimeoutError(f"weights v{version} reached {len(seen)}/{running} rollout replicas")
        res = await call_with_retry(handle.update_weights, ref, version)
        seen.add(res["replica"])
        loaded += 0 if res["skipped"] else 1


def running_replicas(app_name: str) -> int:
    from ray import serve

    return serve.status().applications[app_name].deployments["rollout"].replica_states.get("RUNNING", 0)


async def broadcast_weights_collective(handle, app_name: str, state: dict, version: int, *, host: str | None = None,
                                       bucket_mb: float | None = None, timeout_s: float = 300) -> int:
    """Send weights ``version`` to every running replica over a process group (`polya.rl.weight_sync`):
    NCCL when ``state`` lives on a GPU (CUDA IPC for a replica on that same GPU), gloo on CPU. Returns how
    many replicas loaded them.

    Tensors go in their own dtype (the engine casts on load). Serve routes each join call to one replica, so the call
    is repeated until every replica has claimed a rank; then rank 0 (this process) broadcasts."""
    import time

    import ray

    from polya.rl import weight_sync as ws

    host = host or ray.util.get_node_ip_address()
    replicas = running_replicas(app_name)
    if not replicas:
        raise RuntimeError(f"rollout app {app_name!r} has no running replica to send weights to")
    metas, buckets = ws.plan(state, bucket_mb or ws.DEFAULT_BUCKET_MB)
    store = await asyncio.to_thread(ws.open_store, host, 0, True, timeout_s)
    device = next(iter(state.values())).device
    spec = ws.GroupSpec(host=host, port=store.port, world=1 + replicas, version=version,
                        backend=ws.backend_for(device), tensors=metas, buckets=buckets, timeout_s=timeout_s,
                        source_device=ws.device_uuid(device))
    deadline = time.monotonic() + timeout_s
    joined: set[str] = set()
    while len(joined) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"weights v{version}: {len(joined)}/{replicas} rollout replicas joined the group")
        res = await call_with_retry(handle.join_weight_group, spec.to_dict())
        if res["rank"] is not None:
            joined.add(res["replica"])
    shared = await asyncio.to_thread(ws.send, spec, store, state)
    await asyncio.to_thread(ws.wait_loaded, store, spec)
    del shared  # CUDA IPC receivers have loaded from these buffers: now they may go
    return replicas


def shutdown_serve() -> None:
    from ray import serve

    serve.shutdown()
