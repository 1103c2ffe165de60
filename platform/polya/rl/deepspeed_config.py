"""DeepSpeed configuration from a learner block of the spec (ZeRO 0-3, bf16 or fp32, offload)."""
from __future__ import annotations

from typing import Any


def deepspeed_config(zero_stage: int, precision: str, micro_batch: int, grad_accum: int, max_grad_norm: float,
                     offload_optimizer: bool = False) -> dict[str, Any]:
    zero: dict[str, Any] = {"stage": zero_stage}
    if zero_stage >= 1:
        zero.update(overlap_comm=False, contiguous_gradients=True)
    if offload_optimizer and zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if zero_stage == 3:
        zero.update(stage3_gather_16bit_weights_on_model_save=True)
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # a client torch.optim.AdamW is passed in: no DeepSpeed optimizer op to JIT-compile
        "zero_allow_untested_optimizer": True,
    }
