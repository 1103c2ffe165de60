"""A stage's engine configuration from its own spec block: vLLM's memory share follows the replica's GPU share."""
from __future__ import annotations

import pytest

from polya.engines.base import EngineConfig, gpu_memory_share
from polya.spec import PolyaRun


@pytest.mark.parametrize("gpus,share", [(0, 0.85), (0.5, 0.425), (0.25, 0.2125), (1, 0.85), (2, 0.85)])
def test_memory_share_follows_the_gpu_share(gpus, share):
    assert gpu_memory_share(gpus) == pytest.approx(share)


def test_one_gpu_box_rollout_takes_half_the_card(local_doc):
    local_doc["spec"]["grpo"]["rollout"]["gpusPerReplica"] = 0.5
    run = PolyaRun.model_validate(local_doc)
    cfg = EngineConfig.from_spec(run.spec.model, run.spec.grpo.rollout, "/models/x", run.spec.seed)
    assert cfg.gpu_memory_utilization == pytest.approx(0.425)
    assert cfg.enforce_eager is False  # GPU replicas use vLLM's compiled graphs
    cpu = EngineConfig.from_spec(run.spec.model, run.spec.selfGeneration, "/models/x", run.spec.seed)
    assert cpu.gpu_memory_utilization == pytest.approx(0.85) and cpu.enforce_eager is True


class _Stop(Exception):
    pass


def test_evaluation_and_the_judge_build_their_engines_from_their_own_blocks(local_doc, tiny_model, tmp_path,
                                                                             monkeypatch):
    """The evaluate stage's rollout engine comes from `evaluation`, not `grpo.rollout`; a judge's engine from
    `filtering.rewardModel`, not `selfGeneration` (the stage is stopped where it would start its replicas)."""
    from polya.artifacts import ArtifactStore
    from polya.reward import ScorerConfig
    from polya.stages import evaluate
    from polya.stages.common import StageContext

    local_doc["spec"]["model"]["name"] = str(tiny_model)
    local_doc["spec"]["storage"]["uri"] = str(tmp_path / "run")
    local_doc["spec"]["evaluation"].update(engine="transformers", maxNumSeqs=7, replicas=2)
    local_doc["spec"]["grpo"]["rollout"].update(engine="vllm", maxNumSeqs=64)
    local_doc["spec"]["selfGeneration"].update(engine="vllm", gpusPerReplica=0)
    local_doc["spec"]["filtering"]["rewardModel"] = {"kind": "judge", "name": str(tiny_model),
                                                     "engine": "transformers", "maxNumSeqs": 3, "gpusPerReplica": 0.5}
    run = PolyaRun.model_validate(local_doc)
    seen = {}

    def capture(ctx, cfg, block, name):
        seen.update(cfg=cfg, replicas=block.replicas)
        raise _Stop

    monkeypatch.setattr(evaluate, "rollout_service", capture)
    with pytest.raises(_Stop):
        evaluate.run(StageContext(run=run, store=ArtifactStore(str(tmp_path / "run")), stage="evaluate",
                                  arm="base", progress=False))
    assert (seen["cfg"].kind, seen["cfg"].max_num_seqs, seen["replicas"]) == ("transformers", 7, 2)
    judge = ScorerConfig.from_spec(run.spec.filtering.rewardModel, run.spec.model, run.spec.seed).engine
    assert (judge.kind, judge.max_num_seqs) == ("transformers", 3)
    assert judge.gpu_memory_utilization == pytest.approx(0.425) and judge.enforce_eager is False


def test_self_generation_is_written_by_selfgeneration_model_when_set(local_doc, tiny_model, tmp_path, monkeypatch):
    """The distillation baseline: with selfGeneration.model the self-generation stage serves the teacher (its
    engine, its context length, its tokenizer's prompts), not the run's model (stopped where it would start
    its replicas)."""
    from polya.artifacts import ArtifactStore
    from polya.stages import selfgen
    from polya.stages.common import StageContext

    local_doc["spec"]["storage"]["uri"] = str(tmp_path / "run")
    local_doc["spec"]["selfGeneration"]["model"] = {"name": str(tiny_model), "dtype": "float32", "maxModelLen": 768}
    run = PolyaRun.model_validate(local_doc)
    assert run.spec.model.name != str(tiny_model)
    seen = {}

    def capture(ctx, cfg, block, name):
        seen.update(cfg=cfg)
        raise _Stop

    monkeypatch.setattr(selfgen, "rollout_service", capture)
    with pytest.raises(_Stop):
        selfgen.run(StageContext(run=run, store=ArtifactStore(str(tmp_path / "run")), stage="selfgen", arm="polya",
                                 progress=False))
    assert (seen["cfg"].model, seen["cfg"].max_model_len, seen["cfg"].dtype) == (str(tiny_model), 768, "float32")
