"""The learner's side of a weight sync: after every update the full policy reaches every rollout replica.

The receiving side is the rollout app (`polya.serve.rollout.RolloutServer`): ``update_weights`` for the
object-store path, ``join_weight_group`` + a background receive for the collective one
(`polya.rl.weight_sync` holds that protocol's pure parts and its store/group I/O). `WeightPublisher`
is what a learner rank holds: ``publish(module, version)`` gathers the weights where the transport wants
them and hands them to every replica, with every rank in step.
"""
from __future__ import annotations

import asyncio
import time

from polya.serve.launch import call_with_retry


class WeightPublisher:
    """Rank 0 of the learners sends; every rank takes part in gathering (ZeRO-3 shards) and the barrier."""

    def __init__(self, app: str, mode: str, zero_stage: int, rank: int):
        from ray import serve

        self.app, self.collective, self.zero_stage, self.rank = app, mode == "collective", zero_stage, rank
        self.handle = serve.get_app_handle(app) if rank == 0 else None

    def publish(self, module, device, version: int) -> float:
        """Weights ``version`` of ``module`` to every replica; returns the seconds it took."""
        import torch

        from polya.rl.weights import full_state_dict, to_blob

        t0 = time.perf_counter()
        if self.rank == 0 or self.zero_stage == 3:  # gathering ZeRO-3 shards takes every rank
            # the collective path sends from where the weights are (NCCL from the GPU), the object store from CPU
            state = full_state_dict(module, device=device if self.collective else "cpu")
        if self.rank == 0:
            if self.collective:
                asyncio.run(broadcast_weights_collective(self.handle, self.app, state, version))
            else:
                asyncio.run(broadcast_weights(self.handle, self.app, to_blob(state), version))
        torch.distributed.barrier()
        return time.perf_counter() - t0


async def broadcast_weights(handle, app_name: str, blob: bytes, version: int, timeout_s: float = 300) -> int:
    """Send weights ``version`` to every running replica of the rollout app; returns how many loaded it.

    Serve routes a call to one replica, so the call is repeated until every replica id has answered
    at ``version`` (replicas already there skip the load). The blob goes to the object store once."""
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
        res = await call_with_retry(handle.join_weight_group, spec)
        if res["rank"] is not None:
            joined.add(res["replica"])
    shared = await asyncio.to_thread(ws.send, spec, store, state)
    await asyncio.to_thread(ws.wait_loaded, store, spec)
    del shared  # CUDA IPC receivers have loaded from these buffers: now they may go
    return replicas


