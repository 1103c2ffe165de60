"""Moving a learner's weights to rollout engines: a safetensors blob in Hugging Face parameter names."""
from __future__ import annotations

import contextlib

import torch


def full_state_dict(module: torch.nn.Module, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Full (gathered under ZeRO-3) parameters and buffers on ``device`` (floating ones cast to ``dtype`` when
    given), without a tied output embedding."""
    params = list(module.parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitions parameters
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)

    def copy(v: torch.Tensor) -> torch.Tensor:
        cast = dtype if dtype is not None and v.is_floating_point() else v.dtype
        return v.detach().to(device, dtype=cast, copy=True).contiguous()

    with gather:
        state = {k: copy(v) for k, v in module.state_dict().items()}
    tied = getattr(getattr(module, "config", None), "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    return state


def to_blob(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> bytes:
    import safetensors.torch

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return safetensors.torch.save(state)
