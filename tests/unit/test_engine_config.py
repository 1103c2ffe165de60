"""A stage's engine configuration from its spec block: vLLM's memory share follows the replica's GPU share."""
from __future__ import annotations

import pytest

from polya.spec import PolyaRun
from polya.stages.common import engine_config, gpu_memory_share


@pytest.mark.parametrize("gpus,share", [(0, 0.85), (0.5, 0.425), (0.25, 0.2125), (1, 0.85), (2, 0.85)])
def test_memory_share_follows_the_gpu_share(gpus, share):
    assert gpu_memory_share(gpus) == pytest.approx(share)


def test_one_gpu_box_rollout_takes_half_the_card(local_doc):
    local_doc["spec"]["grpo"]["rollout"]["gpusPerReplica"] = 0.5
    run = PolyaRun.model_validate(local_doc)
    cfg = engine_config(run, "/models/x", run.spec.grpo.rollout)
    assert cfg.gpu_memory_utilization == pytest.approx(0.425)
    assert cfg.enforce_eager is False  # GPU replicas use vLLM's compiled graphs
    cpu = engine_config(run, "/models/x", run.spec.selfGeneration)
    assert cpu.gpu_memory_utilization == pytest.approx(0.85) and cpu.enforce_eager is True
