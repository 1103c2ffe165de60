"""Weight sync after a GRPO step: the collective broadcast (learner rank 0 -> vLLM worker over a process
group; gloo here, NCCL on GPUs) against the object-store path (safetensors bytes through Ray's object store),
same replica, same weights, same run. Prints seconds per sync for each and the ratio object store /
collective, which decides what ``grpo.weightSync: auto`` picks on CPU.

    .venv/bin/python benchmarks/bench_weight_sync.py [--model builtin:smollm2-135m-instruct] [--repeats 5]

Each sync is timed from the learner's full state dict to every replica having
loaded it, as the GRPO loop times ``t_sync``; both paths end in the same vLLM ``reload_weights``.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="auto", help="auto: bfloat16 where this machine computes it natively")
    args = ap.parse_args()

    import torch
    from ray import serve
    from transformers import AutoModelForCausalLM

    from polya.engines.base import EngineConfig
    from polya.models import resolve
    from polya.rl.weights import full_state_dict, to_blob
    from polya.rl.publisher import broadcast_weights, broadcast_weights_collective
    from polya.serve.launch import start_rollout

    from polya.hardware import resolve_dtype

    path = resolve(args.model)
    args.dtype = resolve_dtype(args.dtype)
    dtype = getattr(torch, args.dtype)
    learner = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    cfg = EngineConfig(model=path, kind="vllm", dtype=args.dtype, max_model_len=1024, enforce_eager=True)
    handle = start_rollout(cfg, replicas=args.replicas, name="bench-sync", route_prefix="/bench-sync")
    state = full_state_dict(learner, dtype=dtype)
    mb = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
    version = 0
    times: dict[str, list[float]] = {"object store": [], "collective": []}
    for _ in range(args.repeats + 1):  # the first round of each is warm-up
        for name in times:
            version += 1
            t0 = time.perf_counter()
            state = full_state_dict(learner, dtype=dtype)
            if name == "collective":
                asyncio.run(broadcast_weights_collective(handle, "bench-sync", state, version, host="127.0.0.1"))
            else:
                asyncio.run(broadcast_weights(handle, "bench-sync", to_blob(state), version))
            times[name].append(time.perf_counter() - t0)
    assert handle.info.remote().result()["weight_version"] == version
    serve.delete("bench-sync")
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    print(f"model {args.model}: {len(state)} tensors, {mb:.0f} MiB in {args.dtype}, {args.replicas} replica(s), "
          f"median of {args.repeats}")
    for k, v in med.items():
        print(f"{k:>12}: {v:6.3f} s/sync  (all: {', '.join(f'{x:.2f}' for x in times[k])})")
    print(f"ratio object store / collective = {med['object store'] / med['collective']:.2f}x")


if __name__ == "__main__":
    main()
