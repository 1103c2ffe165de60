"""Start local Ray + Serve, deploy the rollout and reward-model apps, and call them with retries."""
from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polya.engines.base import EngineConfig
    from polya.reward import ScorerConfig

log = logging.getLogger(__name__)

ROLLOUT_APP = "rollout"
REWARD_APP = "reward"


#: a local Ray's control-plane timers, slowed from their defaults (Serve's controller loop 0.1 s, the raylet's
#: resource report 0.1 s, the proxy's health check 10 s). On a small CPU machine the control plane shares the
#: cores with vLLM's worker, whose OpenMP threads are pinned one per core: every wake-up of a Ray process
#: stalls one thread while its partners spin at the next barrier. An idle Ray + Serve with the defaults and
#: the dashboard took 2.3 s of CPU in 20 s (26k wake-ups) and cost vLLM ~10% of its offline tokens/s whether
#: it ran in a replica or beside Ray; these settings and no dashboard took 1.2 s. Set any of them to override.
LOCAL_RAY_ENV = {
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
    "RAY_raylet_report_resources_period_milliseconds": "1000",
    "RAY_SERVE_PROXY_HEALTH_CHECK_PERIOD_S": "30",
}


def ensure_ray(num_cpus: int | None = None, dashboard: bool | None = None) -> None:
    """A local Ray instance (or the cluster's, inside a RayJob where RAY_ADDRESS is set).

    A local instance starts without Ray's dashboard UI unless ``dashboard`` or ``POLYA_RAY_DASHBOARD=1``
    asks for it (its processes cost rollout throughput on small machines, see `LOCAL_RAY_ENV`); the metrics
    agent that exports Prometheus metrics runs either way."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.60 turns token auth on by default
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if os.environ.get("RAY_ADDRESS"):
        ray.init(log_to_driver=True)
        return
    for key, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(key, value)  # read by the processes ray.init starts below
    if dashboard is None:
        dashboard = os.environ.get("POLYA_RAY_DASHBOARD", "0") == "1"
    # one logical CPU over the cores: CPU replicas reserve a token REPLICA_CPUS each and must fit beside
    # one learner worker per core
    ray.init(num_cpus=num_cpus or (os.cpu_count() or 1) + 1, include_dashboard=dashboard, log_to_driver=False,
             ignore_reinit_error=True, configure_logging=False)


def ensure_serve(http_port: int = 8000, host: str = "127.0.0.1") -> None:
    """Serve with one HTTP proxy, on the head: stages reach their apps through handles, people through it."""
    from ray import serve

    serve.start(http_options={"host": host, "port": http_port}, proxy_location="HeadOnly")


#: what a CPU replica reserves: a token, so that it never lands on a head started with ``num-cpus: 0``
#: (KubeRay's advice, and the operator's), while the engine's threads share the cores with the learners
REPLICA_CPUS = 0.01


def actor_options(gpus: float) -> dict[str, Any]:
    return {"num_cpus": 0, "num_gpus": gpus} if gpus else {"num_cpus": REPLICA_CPUS}


#: rollout calls go to the replicas in turn (Ray's round-robin router): a GRPO step sends its prompts as a
#: burst of concurrent calls (`polya.stages.grpo.generate_spread`), and the default power-of-two router,
#: whose queue lengths are stale within a burst, sent 6 of 8 of them to one of two replicas
ROLLOUT_ROUTER = {"request_router_class": "ray.serve.experimental.round_robin_router:RoundRobinRouter"}


def start_rollout(
    engine_cfg: "EngineConfig",
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
    app = RolloutServer.options(num_replicas=replicas, ray_actor_options=actor_options(gpus_per_replica),
                                request_router_config=ROLLOUT_ROUTER).bind(
        engine_cfg, max_tokens_limit=max_tokens_limit
    )
    return serve.run(app, name=name, route_prefix=route_prefix)


def start_reward(scorer_cfg: "ScorerConfig", replicas: int = 1, gpus_per_replica: float = 0, http_port: int = 8000,
                 name: str = REWARD_APP):
    from ray import serve

    from polya.serve.reward import RewardServer

    ensure_ray()
    ensure_serve(http_port)
    app = RewardServer.options(num_replicas=replicas, ray_actor_options=actor_options(gpus_per_replica)).bind(scorer_cfg)
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


def shutdown_serve() -> None:
    from ray import serve

    serve.shutdown()
