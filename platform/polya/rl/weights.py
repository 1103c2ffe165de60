"""Moving a learner's weights to rollout engines: a safetensors blob in Hugging Face parameter names."""
from __future__ import annotations

import contextlib

import torch


def full_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full (gathered under ZeRO-3) parameters and buffers, on CPU, without a tied output embedding."""
    params = list(module.parameters())
    gather = contextlib.nullcontext()
    if any(hasattr(p, "ds_id") for p in params):  # ZeRO-3 partitions parameters
        import deepspeed

        gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    with gather:
        state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    tied = getattr(getattr(module, "config", None), "tie_word_embeddings", False)
    if tied:
        state.pop("lm_head.weight", None)
    return state


def to_blob(state: dict[str, torch.Tensor], dtype: torch.dtype | None = None) -> bytes:
    import safetensors.torch

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return safetensors.torch.save(state)
