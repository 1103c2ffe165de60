"""The collective weight-sync path (`polya.rl.weight_sync`): bucket planning and packing, a real gloo
broadcast between processes, and the transformers engine receiving over it. NCCL is the same code with
CUDA tensors; no GPU runs here, so only gloo is exercised."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading

import pytest
import torch

from polya.rl import weight_sync as ws


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "embed.weight": torch.randn(64, 16, generator=g, dtype=torch.float32),  # 4096 B
        "layer.0.weight": torch.randn(16, 16, generator=g),  # 1024 B
        "layer.0.bias": torch.randn(16, generator=g),  # 64 B
        "norm.weight": torch.randn(16, generator=g).to(torch.bfloat16),  # 32 B, another dtype
        "head.weight": torch.randn(8, 16, generator=g),  # 512 B
    }


def test_plan_buckets_by_dtype_and_size():
    metas, buckets = ws.plan(_state(), bucket_mb=5000 / 2**20)  # a 5000-byte bucket limit
    assert [m.name for m in metas] == list(_state())
    assert metas[3].dtype == "bfloat16" and metas[0].shape == (64, 16) and metas[0].numel == 1024
    # 4096 + 1024 > 5000 starts a new bucket; the bf16 tensor breaks the run of float32 tensors
    assert buckets == [[0], [1, 2], [3], [4]]
    assert ws.plan(_state())[1] == [[0, 1, 2], [3], [4]]  # default 256 MiB: only dtype changes split


def test_pack_unpack_round_trip():
    state = _state()
    names = ["layer.0.weight", "layer.0.bias", "head.weight"]
    metas = [ws.TensorMeta(n, tuple(state[n].shape), "float32") for n in names]
    buffer = ws.pack(state[n] for n in names)
    assert buffer.numel() == 256 + 16 + 128
    for (name, t), n in zip(ws.unpack(buffer, metas), names):
        assert name == n and torch.equal(t, state[n])
    with pytest.raises(ValueError, match="bucket holds 400 elements, its tensors 384"):
        ws.unpack(buffer, metas[:1] + metas[2:])


def test_group_spec_crosses_as_plain_data():
    metas, buckets = ws.plan(_state())
    spec = ws.GroupSpec("127.0.0.1", 1234, 3, 7, "gloo", metas, buckets)
    back = ws.GroupSpec.from_dict(spec.to_dict())
    assert back == spec and back.prefix == "v7"


def test_a_receiver_on_the_learners_gpu_takes_ipc_the_rest_the_group():
    nccl = ws.GroupSpec("10.0.0.1", 1, 4, 2, "nccl", source_device="GPU-aaaa")
    assert ws.route_for(nccl, "GPU-aaaa") == "ipc"  # NCCL refuses two ranks on one device
    assert ws.route_for(nccl, "GPU-bbbb") == "group"
    assert ws.route_for(nccl, None) == "group"
    # gloo (CPU learner) and a learner whose GPU is unknown: everyone takes the broadcast
    assert ws.route_for(ws.GroupSpec("h", 1, 4, 2, "gloo"), None) == "group"
    assert ws.route_for(ws.GroupSpec("h", 1, 4, 2, "nccl"), "GPU-aaaa") == "group"
    # dense group ranks for the broadcast members, in member order; rank 0 is the learner
    assert ws.assign_ranks({1: "group", 2: "ipc", 3: "group"}) == {1: 1, 3: 2}
    assert ws.assign_ranks({1: "ipc", 2: "ipc"}) == {}
    assert list(nccl.members) == [1, 2, 3]


def _receiver(port: int, spec: dict, out) -> None:
    import safetensors.torch

    s = ws.GroupSpec.from_dict(spec)
    store = ws.open_store("127.0.0.1", port, master=False, timeout_s=60)
    rank = ws.claim_rank(s, store)  # 1 or 2, whichever process asks first
    got = ws.receive(s, store, rank)
    out.put((rank, safetensors.torch.save({name: t.contiguous() for name, t in got})))  # bytes outlive the process
    ws.report(store, s, rank)


def test_gloo_broadcast_reaches_every_rank_and_reports():
    state = _state()
    store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=60)
    metas, buckets = ws.plan(state, bucket_mb=5000 / 2**20)
    spec = ws.GroupSpec("127.0.0.1", store.port, 3, 1, "gloo", metas, buckets, timeout_s=60)
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(store.port, spec.to_dict(), out)) for _ in range(2)]
    for p in procs:
        p.start()
    ws.send(spec, store, state)
    import safetensors.torch

    received = {rank: safetensors.torch.load(blob) for rank, blob in (out.get(timeout=60) for _ in procs)}
    ws.wait_loaded(store, spec)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(received) == [1, 2]
    for got in received.values():
        assert set(got) == set(state)
        for k in state:
            assert got[k].dtype == state[k].dtype and torch.equal(got[k], state[k])
    # the group is full: a late replica gets no rank and waits for the next version
    assert ws.claim_rank(spec, store) is None


def test_receiver_error_reaches_the_learner():
    store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=5)
    spec = ws.GroupSpec("127.0.0.1", store.port, 3, 4, "gloo", timeout_s=5)
    ws.report(store, spec, 1)
    ws.report(store, spec, 2, error="replica ab12: ValueError: unexpected tensors ['x']")
    with pytest.raises(RuntimeError, match=r"weights v4: receiver 2 failed: replica ab12: ValueError"):
        ws.wait_loaded(store, spec)
    quiet = ws.GroupSpec("127.0.0.1", store.port, 2, 5, "gloo", timeout_s=0.2)
    with pytest.raises(TimeoutError, match=r"receivers \[1\] did not report"):
        ws.wait_loaded(store, quiet)


def test_transformers_engine_receives_the_same_weights_as_a_blob(tiny_model):
    """Collective and object-store paths load identical weights: the same greedy tokens afterwards."""
    import safetensors.torch

    from polya.engines.base import EngineConfig, Sampling, create_engine

    cfg = EngineConfig(model=str(tiny_model), kind="transformers", dtype="float32", max_model_len=512)
    by_blob, by_group = create_engine(cfg), create_engine(cfg)
    greedy = Sampling(temperature=0.0, max_tokens=8)
    before = asyncio.run(by_group.generate(["The answer is"], greedy))[0][0].token_ids
    g = torch.Generator().manual_seed(3)
    state = {k: (v + torch.randn(v.shape, generator=g) * 0.5).contiguous()
             for k, v in by_blob.model.state_dict().items() if k != "lm_head.weight"}
    asyncio.run(by_blob.update_weights(safetensors.torch.save(state)))

    store = ws.open_store("127.0.0.1", 0, master=True, timeout_s=60)
    metas, buckets = ws.plan(state)
    spec = ws.GroupSpec("127.0.0.1", store.port, 2, 1, "gloo", metas, buckets, timeout_s=60)
    sender = threading.Thread(target=ws.send, args=(spec, store, state))
    sender.start()
    n = asyncio.run(by_group.receive_weights(spec.to_dict(), 1))
    sender.join(60)
    assert n == len(state) and by_group.weight_version == 1
    after = asyncio.run(by_group.generate(["The answer is"], greedy))[0][0].token_ids
    assert after == asyncio.run(by_blob.generate(["The answer is"], greedy))[0][0].token_ids
    assert after != before
