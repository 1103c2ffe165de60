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
