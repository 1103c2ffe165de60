"""Weight sync over a process group: the learner's rank 0 broadcasts the policy to every rollout engine.

This is the path of OpenRLHF and veRL (learner and vLLM workers in one ad-hoc group, tensors broadcast
from the learner), written on torch's own process-group classes so that one code path serves both
backends: ``nccl`` on GPU nodes, ``gloo`` on CPU (where CI runs it). The group lives beside, never in,
the default group of either side: Ray Train's learners and vLLM's workers keep theirs.

A receiver on the learner's own GPU (a one-GPU box: learner and rollout replica sharing the card with
fractional GPUs) cannot be in an NCCL group with it — NCCL refuses two ranks on one device ("Duplicate
GPU detected", seen on the lent H200). It takes the buckets through CUDA IPC instead: the learner
shares each packed bucket's memory (`torch.multiprocessing`'s CUDA IPC handles, through the store), the
receiver maps and loads it without a copy through the host, as OpenRLHF does for colocated engines.

One sync, for weight version ``v`` (`polya.rl.publisher.broadcast_weights_collective` drives it):

1. the learner hosts a TCPStore and describes the tensors once (`plan`: names, shapes, dtypes, and
   buckets of at most ``bucket_mb`` that are flattened into one buffer each: one collective per bucket
   instead of one per tensor), with the UUID of its GPU;
2. every rollout replica is asked to join; a replica claims a member number with an atomic counter in
   the store and starts receiving in the background (inside the vLLM worker process), then answers;
3. each receiver posts its route (`route_for`: ``ipc`` on the learner's GPU, else ``group``); the
   learner gives the ``group`` members dense ranks 1..k, posts IPC handles when anyone takes ``ipc``,
   and broadcasts the buckets over a group of 1 + k ranks when k > 0;
4. each receiver unpacks the buckets into named tensors and loads them (vLLM ``reload_weights``, the
   transformers engine ``load_state_dict``), then writes ``done/<member>`` — or ``error/<member>`` with
   the reason — to the store, which the learner waits on before it frees the shared buffers.

A group is made per version (keys live under ``v<version>/``): a replica replaced between two steps
simply joins the next one. Pure logic (`plan`, `pack`, `unpack`, `route_for`, `assign_ranks`) is
separate from the I/O.
"""
from __future__ import annotations

import datetime
import math
import pickle
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
    world: int  # 1 (the learner) + one member per receiving engine worker
    version: int
    backend: str  # "gloo" | "nccl"
    tensors: list[TensorMeta] = field(default_factory=list)
    buckets: list[list[int]] = field(default_factory=list)  # indices into tensors, one list per collective
    timeout_s: float = 300.0
    source_device: str | None = None  # UUID of the learner's GPU: receivers on it take CUDA IPC

    @property
    def members(self) -> range:
        return range(1, self.world)

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


def route_for(spec: GroupSpec, device_uuid: str | None) -> str:
    """How a receiver whose GPU has ``device_uuid`` (None off GPU) gets the buckets: ``ipc`` when it sits on
    the learner's own GPU (NCCL refuses two ranks on one device), else ``group`` (the broadcast)."""
    if spec.backend == "nccl" and spec.source_device is not None and device_uuid == spec.source_device:
        return "ipc"
    return "group"


def assign_ranks(routes: dict[int, str]) -> dict[int, int]:
    """Group ranks 1..k for the members that take the broadcast, in member order (rank 0 is the learner)."""
    return {m: i for i, m in enumerate(sorted(m for m, r in routes.items() if r == "group"), start=1)}


# ------------------------------------------------------------------------------------------------- I/O
def backend_for(device: torch.device | str) -> str:
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def device_uuid(device: torch.device | str) -> str | None:
    """The GPU's UUID (the same card seen under any CUDA_VISIBLE_DEVICES numbering), None off GPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return str(torch.cuda.get_device_properties(device).uuid)


def open_store(host: str, port: int, master: bool, timeout_s: float) -> "torch.distributed.Store":
    import torch.distributed as dist

    return dist.TCPStore(host, port, is_master=master, wait_for_workers=False,
                         timeout=datetime.timedelta(seconds=timeout_s))


def open_group(spec: GroupSpec, store, rank: int, world: int):
    """This process's member of version ``spec.version``'s group of ``world`` ranks (blocks until all joined)."""
    import torch.distributed as dist

    prefixed = dist.PrefixStore(spec.prefix, store)
    timeout = datetime.timedelta(seconds=spec.timeout_s)
    if spec.backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(prefixed, rank, world, opts)
    if spec.backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world, timeout)
    raise ValueError(f"weight-sync backend must be 'gloo' or 'nccl', got {spec.backend!r}")


def _share(buffer: torch.Tensor):
    """A CUDA IPC handle for ``buffer`` (plain data another process on the same GPU can map)."""
    from torch.multiprocessing.reductions import reduce_tensor

    return reduce_tensor(buffer)


def _map(shared, device: torch.device) -> torch.Tensor:
    rebuild, args = shared
    args = list(args)
    # the storage's device, in this process's CUDA numbering (the learner's may differ)
    args[6] = device.index if device.index is not None else torch.cuda.current_device()
    return rebuild(*args)


def send(spec: GroupSpec, store, state: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The learner: deliver ``state`` (in the rollout dtype, on the backend's device) to every member —
    broadcast to the ``group`` members, shared by CUDA IPC with the ``ipc`` ones. Returns the buffers the
    ``ipc`` members map: keep them until `wait_loaded` returns."""
    routes = {m: store.get(f"{spec.prefix}/route/{m}").decode() for m in spec.members}
    ranks = assign_ranks(routes)
    for m, r in ranks.items():
        store.set(f"{spec.prefix}/rank/{m}", str(r))
    store.set(f"{spec.prefix}/group_world", str(1 + len(ranks)))
    tensors = list(state.values())
    shared: list[torch.Tensor] = []
    if "ipc" in routes.values():
        shared = [pack(tensors[i] for i in bucket) for bucket in spec.buckets]
        store.set(f"{spec.prefix}/ipc", pickle.dumps([_share(b) for b in shared]))
    if ranks:
        group = open_group(spec, store, 0, 1 + len(ranks))
        for n, bucket in enumerate(spec.buckets):
            group.broadcast(shared[n] if shared else pack(tensors[i] for i in bucket), 0).wait()
    return shared


def receive(spec: GroupSpec, store, member: int, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """A receiving member: the learner's tensors, named, in plan order — views into mapped IPC memory on
    the learner's GPU, else received over the group."""
    device = torch.device(device)
    route = route_for(spec, device_uuid(device))
    store.set(f"{spec.prefix}/route/{member}", route)
    if route == "ipc":
        buffers = [_map(h, device) for h in pickle.loads(store.get(f"{spec.prefix}/ipc"))]
        return [item for buffer, bucket in zip(buffers, spec.buckets)
                for item in unpack(buffer, [spec.tensors[i] for i in bucket])]
    rank = int(store.get(f"{spec.prefix}/rank/{member}"))
    group = open_group(spec, store, rank, int(store.get(f"{spec.prefix}/group_world")))
    out: list[tuple[str, torch.Tensor]] = []
    for bucket in spec.buckets:
        metas = [spec.tensors[i] for i in bucket]
        buffer = torch.empty(sum(m.numel for m in metas), dtype=getattr(torch, metas[0].dtype), device=device)
        group.broadcast(buffer, 0).wait()
        out += unpack(buffer, metas)
    return out


def receive_group(group: dict[str, Any], member: int, device: torch.device | str = "cpu") -> list[tuple[str, torch.Tensor]]:
    """What a receiving engine runs: join ``group`` (a `GroupSpec` as plain data) as ``member`` and return the
    named tensors; on GPUs it receives on this process's current GPU."""
    spec = GroupSpec.from_dict(group)
    if spec.backend == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    store = open_store(spec.host, spec.port, master=False, timeout_s=spec.timeout_s)
    return receive(spec, store, member, device)


def claim_rank(spec: GroupSpec, store) -> int | None:
    """A receiver's member number in ``spec`` (1, 2, …), or None when every place is taken (a replica that
    started after the learner counted the replicas waits for the next version)."""
    member = store.add(f"{spec.prefix}/ranks", 1)
    return member if member < spec.world else None


def report(store, spec: GroupSpec, member: int, error: str | None = None) -> None:
    store.set(f"{spec.prefix}/{'error' if error else 'done'}/{member}", error or "ok")


def wait_loaded(store, spec: GroupSpec) -> None:
    """Learner: until every receiver reported; raises with the first receiver's error."""
    import time

    deadline = time.monotonic() + spec.timeout_s
    pending = set(spec.members)
    while pending:
        for member in sorted(pending):
            if store.check([f"{spec.prefix}/error/{member}"]):
                raise RuntimeError(f"weights v{spec.version}: receiver {member} failed: "
                                   f"{store.get(f'{spec.prefix}/error/{member}').decode()}")
            if store.check([f"{spec.prefix}/done/{member}"]):
                pending.discard(member)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"weights v{spec.version}: receivers {sorted(pending)} did not report within "
                               f"{spec.timeout_s}s")
        if pending:
            time.sleep(0.01)
