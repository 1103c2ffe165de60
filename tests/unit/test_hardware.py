"""`dtype: auto` / `precision: auto` follow what this machine computes natively."""
from __future__ import annotations

import pytest

from polya import hardware
from polya.spec import GRPOSpec, ModelSpec


@pytest.mark.parametrize("native, dtype, precision", [(True, "bfloat16", "bf16"), (False, "float32", "fp32")])
def test_auto_follows_native_bf16(monkeypatch, native, dtype, precision):
    monkeypatch.setattr(hardware, "native_bf16", lambda: native)
    assert hardware.resolve_dtype("auto") == dtype and hardware.resolve_precision("auto") == precision
    # an explicit choice is never second-guessed
    assert hardware.resolve_dtype("bfloat16") == "bfloat16" and hardware.resolve_precision("fp32") == "fp32"


def test_defaults_are_auto():
    assert ModelSpec(name="builtin:smollm2-135m-instruct").dtype == "auto"
    assert GRPOSpec().precision == "auto"


def test_this_machine_agrees_with_pytorch():
    import torch

    if torch.cuda.is_available():
        assert hardware.native_bf16() == torch.cuda.is_bf16_supported()
    else:
        assert hardware.native_bf16() == bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@pytest.mark.parametrize("cpus, local, threads", [(2, 1, 2), (2, 2, 1), (16, 4, 4), (1, 3, 1), (8, 0, 8)])
def test_learner_threads_share_the_node(cpus, local, threads):
    assert hardware.learner_threads(cpus, local) == threads


def test_vllm_keeps_no_core_for_its_scheduler_on_two_cores():
    assert hardware.vllm_cpu_reserved_cores(2) == 0 and hardware.vllm_cpu_reserved_cores(1) == 0
    assert hardware.vllm_cpu_reserved_cores(16) is None  # vLLM's own default (one core) where not measured


def test_cpu_learner_workers_start_with_their_share_of_the_cores(monkeypatch):
    """Ray would start them with OMP_NUM_THREADS=1 (one reserved CPU each); the variable must be right before
    torch loads, so it goes in the workers' runtime environment."""
    from polya.rl.learner import worker_runtime_env

    monkeypatch.setattr(hardware, "usable_cpus", lambda: 16)
    assert worker_runtime_env(GRPOSpec(workers=4)) == {"env_vars": {"OMP_NUM_THREADS": "4"}}
    assert worker_runtime_env(GRPOSpec(workers=1)) == {"env_vars": {"OMP_NUM_THREADS": "16"}}
    assert worker_runtime_env(GRPOSpec(workers=2, gpusPerWorker=1)) == {}  # GPU learners: Ray's default
