"""Weight sync over a process group: the learner's rank 0 broadcasts the policy to every rollout engine.

This is the path of OpenRLHF and veRL (learner and vLLM workers in one ad-hoc group, tensors broadcast
from the learner), written on torch's own process-group classes so that one code path serves both
backends: ``nccl`` on GPU nodes, ``gloo`` on CPU (where CI runs it). The group lives beside, never in,
the default group of either side: Ray Train's learners and vLLM's workers keep theirs.

One sync, for weight version ``v`` (`polya.serve.launch.broadcast_weights_collective` drives it):

1. the learner hosts a TCPStore and describes the tensors once (`plan`: names, shapes, dtypes, and
   buckets of at most ``bucket_mb`` that are flattened into one buffer each: one collective per bucket
   instead of one per tensor);
2. every rollout replica is asked to join; a replica claims its rank with an atomic counter in the
   store and starts receiving in the background (inside the vLLM worker process), then answers;
3. rank 0 broadcasts the buckets; each receiver unpacks them into named tensors and loads them (vLLM
   ``reload_weights``, the transformers engine ``load_state_dict``), then writes ``done/<rank>`` —
   or ``error/<rank>`` with the reason — to the store, which the learner waits on.

A group is made per version (keys live under ``v<version>/``): a replica replaced between two steps
simply joins the next one. Pure logic (`plan`, `pack`, `unpack`) is separate from the I/O.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

import torch

DEFAULT_BUCKET_MB = 256


@dataclass(frozen=True)
class TensorMeta:
    name: str
    shape: tuple[int, ...]
    dtype: str  # "bfloat16", "float32", ...

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class GroupSpec:
    """Everything a receiver needs to join version ``version``'s group (plain data: it crosses Ray)."""

    host: str
    port: int
    world: int  # 1 (the learner) + one rank per receiving engine worker
    version: int
    backend: str  # "gloo" | "nccl"
    tensors: list[TensorMeta] = field(default_factory=list)
    buckets: list[list[int]] = field(default_factory=list)  # indices into tensors, one list per collective
    timeout_s: float = 300.0

    @property
    def prefix(self) -> str:
        return f"v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "GroupSpec":
        d = dict(d)
        d["tensors"] = [TensorMeta(t["name"], tuple(t["shape"]), t["dtype"]) for t in d["tensors"]]
        return cls(**d)


# ------------------------------------------------------------------------------------------ pure logic
def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def plan(state: dict[str, torch.Tensor], bucket_mb: float = DEFAULT_BUCKET_MB) -> tuple[list[TensorMeta], list[list[int]]]:
    """Tensor descriptions in ``state`` order, and buckets: consecutive runs of one dtype whose bytes stay
    within ``bucket_mb`` (a tensor larger than that is a bucket of its own)."""
    limit = bucket_mb * 2**20
    metas = [TensorMeta(k, tuple(v.shape), dtype_name(v.dtype)) for k, v in state.items()]
    buckets: list[list[int]] = []
    size = 0
    for i, (m, t) in enumerate(zip(metas, state.values())):
        nbytes = t.numel() * t.element_size()
        if not buckets or metas[buckets[-1][0]].dtype != m.dtype or size + nbytes > limit:
            buckets.append([])
            size = 0
        buckets[-1].append(i)
        size += nbytes
    return metas, buckets


def pack(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """One flat buffer holding ``tensors`` back to back (they share a dtype and a device)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unpack(buffer: torch.Tensor, metas: list[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
    """The inverse of `pack`: named views into ``buffer`` with the described shapes."""
    out, offset = [], 0
    for m in metas:
        out.append((m.name, buffer[offset : offset + m.numel].view(m.shape)))
        offset += m.numel
    if offset != buffer.numel():
        raise ValueError(f"bucket holds {buffer.numel()} elements, its tensors {offset}")
    return out


# ------------------------------------------------------------------------------------------------- I/O
def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def open_store(host: str, port: int, master: bool, timeout_s: float) -> "torch.distributed.Store":
    import torch.distributed as dist

    return dist.TCPStore(host, port, is_master=master, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout_s))


def open_group(spec: GroupSpec, store, rank: int):
    """This process's member of version ``spec.version``'s group (blocks until all ``world`` ranks joined)."""
    import torch.distributed as dist

    prefixed = dist.PrefixStore(spec.prefix, store)
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    if spec.backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, spec.world, opts)
    if spec.backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, spec.world, timeout)
    raise ValueError(f"weight-sync backend must be 'gloo' or 'nccl', got {spec.backend!r}")


def send(spec: GroupSpec, store, state: dict[str, torch.Tensor]) -> None:
    """Rank 0: broadcast ``state`` (already in the rollout dtype, on the backend's device) bucket by bucket."""
    group = open_group(spec, store, 0)
    tensors = list(state.values())
    for bucket in spec.buckets:
        group.broadcast(pack(tensors[i] for i in bucket), 0).wait()


def receive(spec: GroupSpec, store, rank: int, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """A receiving rank: the broadcast tensors, named, in plan order."""
    group = open_group(spec, store, rank)
    out: list[tuple[str, torch.Tensor]] = []
    for bucket in spec.buckets:
        metas = [spec.tensors[i] for i in bucket]
        buffer = torch.empty(sum(m.numel for m in metas), dtype=getattr(torch, metas[0].dtype), device=device)
        group.broadcast(buffer, 0).wait()
        out += unpack(buffer, metas)
    return out


def receive_group(group: dict[str, Any], rank: int, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """What a receiving engine runs: join ``group`` (a `GroupSpec` as plain data) as ``rank`` and return the
    named tensors; NCCL receives on this process's current GPU."""
    spec = GroupSpec.from_dict(group)
    if spec.backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    store = open_store(spec.host, spec.port, master=False, timeout_s=spec.timeout_s)
    return receive(spec, store, rank, device)


def claim_rank(spec: GroupSpec, store) -> int | None:
    """A receiver's rank in ``spec``'s group (1, 2, …), or None when the group is already full (a replica
    that started after the learner counted the replicas waits for the next version)."""
    rank = store.add(f"{spec.prefix}/ranks", 1)
    return rank if rank < spec.world else None


def report(store, spec: GroupSpec, rank: int, error: str | None = None) -> None:
    store.set(f"{spec.prefix}/{'error' if error else 'done'}/{rank}", error or "ok")


def wait_loaded(store, spec: GroupSpec) -> None:
    """Learner: until every receiver reported; raises with the first receiver's error."""
    import time

    deadline = time.monotonic() + spec.timeout_s
    pending = set(range(1, spec.world))
    while pending:
        for rank in sorted(pending):
            if store.check([f"{spec.prefix}/error/{rank}"]):
                raise RuntimeError(f"weights v{spec.version}: receiver rank {rank} failed: "
                                   f"{store.get(f'{spec.prefix}/error/{rank}').decode()}")
            if store.check([f"{spec.prefix}/done/{rank}"]):
                pending.discard(rank)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"weights v{spec.version}: ranks {sorted(pending)} did not report within {spec.timeout_s}s")
        if pending:
            time.sleep(0.01)
