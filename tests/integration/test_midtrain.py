"""Mid-training on real Ray Train (2 workers, gloo) + DeepSpeed ZeRO-2 on a tiny model."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM

from polya.artifacts import ArtifactStore
from polya.spec import PolyaRun
from polya.stages.common import StageContext

pytestmark = pytest.mark.slow


def _setup(tiny_model, tmp_path, examples: int = 8, **mt):
    train = {"epochs": 2, "learningRate": 5e-3, "batchSize": 4, "microBatchSize": 1, "workers": 2,
             "zeroStage": 2, "precision": "fp32", "checkpointEvery": 2, "warmupRatio": 0.1}
    train.update(mt)
    run = PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "sft"},
        "spec": {"model": {"name": str(tiny_model), "dtype": "float32"}, "dataset": {"source": "builtin:arithmetic"},
                 "storage": {"uri": str(tmp_path / "run")},
                 "midTraining": train,
                 "evaluation": {"samples": 1, "k": [1], "benchmarks": [{"name": "a", "source": "builtin:arithmetic"}]}},
    })
    store = ArtifactStore(run.spec.storage.uri)
    filt = store.artifact("filter", "fixture")
    store.begin(filt)
    rows = [{"question_id": str(i), "question": f"What is {i} + {i}?", "answer": str(2 * i), "heuristic_id": "analogy",
             "completion": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}", "correct": True, "adherence": 0.5}
            for i in range(examples)]
    pq.write_table(pa.Table.from_pylist(rows), filt.local / "sft.parquet")
    store.commit(filt, {})
    return StageContext(run=run, store=store, stage="midtrain", inputs={"filter": filt}, progress=False)


def test_sft_two_workers_zero2(ray_session, tiny_model, tmp_path):
    import torch

    from polya.stages import midtrain

    ctx = _setup(tiny_model, tmp_path)
    store = ctx.store
    res = midtrain.run(ctx)
    folder = ctx.artifact().local
    log = json.loads((folder / "train_log.json").read_text())
    assert log["world"] == 2 and log["grad_accum"] == 2 and log["examples"] == 8
    assert log["steps"] == res.figures["steps"] == 4  # 8 examples / (2 ranks x 1 x 2) x 2 epochs
    assert json.loads((folder / "resumes.json").read_text()) == []  # one attempt: nothing resumed
    assert [(r["attempt"], r["optimizer_step"], r["resumed_from"]) for r in log["log"]] == [
        (log["log"][0]["attempt"], n, 0) for n in (1, 2, 3, 4)]
    assert res.figures["loss_last"] < res.figures["loss_first"]  # it learns the traces
    trained = AutoModelForCausalLM.from_pretrained(folder / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "midtrain" / ctx.key()).iterdir())
    assert ckpts == ["step_2", "step_4"]
    assert midtrain.run(ctx).skipped


def test_killed_sft_resumes_to_the_same_losses(ray_session, tiny_model, tmp_path, monkeypatch):
    """16 examples on 2 ranks, 2 micro-batches per step: 4 steps per epoch, 8 in all. Crash after step 3 (a
    checkpoint every 2 steps), rerun: the second attempt starts from the step-2 checkpoint (epoch 0 after its
    4th micro-batch, 2 optimizer steps) and computes step 3 on, which a rerun from scratch would not; its
    losses match an uninterrupted run's (the restored weights, optimizer, schedule and data order are right:
    the stamps alone cannot show that)."""
    from polya.rl.learner import checkpoint_steps
    from polya.stages import midtrain

    clean = _setup(tiny_model, tmp_path / "clean", examples=16)
    midtrain.run(clean)
    reference = json.loads((clean.artifact().local / "train_log.json").read_text())
    assert [r["step"] for r in reference["log"]] == list(range(1, 9))

    crashed = _setup(tiny_model, tmp_path / "crashed", examples=16)
    monkeypatch.setenv("POLYA_CRASH_AFTER_STEP", "3")
    with pytest.raises(RuntimeError, match="mid-training failed"):
        midtrain.run(crashed)
    monkeypatch.delenv("POLYA_CRASH_AFTER_STEP")
    ckpt_uri = crashed.learner_job(crashed.artifact(), str(tiny_model)).ckpt_uri
    assert checkpoint_steps(ckpt_uri) == [2], "the crashed attempt left no step-2 checkpoint to resume from"
    resumed = midtrain.run(crashed)
    folder = crashed.artifact().local
    rows = json.loads((folder / "train_log.json").read_text())["log"]
    resumes = json.loads((folder / "resumes.json").read_text())
    assert resumed.figures["steps"] == 8
    assert [r["step"] for r in rows] == list(range(1, 9))

    # the second attempt started from the checkpoint: its step, data position and optimizer step count
    assert len(resumes) == 1, f"the rerun did not resume from the step-2 checkpoint (resumes.json: {resumes})"
    res = resumes[0]
    assert res["checkpoint"].endswith("/step_2") and res["from_step"] == 2, res
    assert res["position"] == {"epoch": 0, "batch": 4}, f"data position not restored: {res}"
    assert res["optimizer_steps"] == 2, f"optimizer step count not restored: {res}"
    first, second = rows[0]["attempt"], res["attempt"]
    assert first != second
    assert [r["attempt"] for r in rows] == [first] * 2 + [second] * 6, "steps 1-2 come from the checkpoint, 3-8 from the rerun"
    new = rows[2]  # the first step the second attempt computed: epoch 0's 5th and 6th micro-batches
    assert (new["step"], new["epoch"], new["batch"], new["optimizer_step"], new["resumed_from"]) == (3, 0, 6, 3, 2), new
    assert [(r["epoch"], r["batch"], r["optimizer_step"]) for r in rows] == [
        (e, b, 4 * e + b // 2) for e in (0, 1) for b in (2, 4, 6, 8)]

    # and what it computed is right: the same losses and schedule as the uninterrupted run
    for a, b in zip(rows, reference["log"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), a["step"]
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9), a["step"]


def test_checkpoint_retention_while_training_and_after_commit(ray_session, tiny_model, tmp_path, monkeypatch):
    """A checkpoint every step (4 steps, one worker). ``keepCheckpoints: 2`` leaves the newest two (the default
    leaves every one: test_sft_two_workers_zero2 keeps both of its). With ``keepCheckpoints: 1`` and
    ``deleteCheckpointsOnCommit``, a crash after step 3 leaves step 3 alone (1 and 2 pruned; the failed stage
    keeps it), the rerun resumes from it, and once the artifact is committed no checkpoint is left."""
    from polya.rl.learner import checkpoint_steps
    from polya.stages import midtrain

    kept = _setup(tiny_model, tmp_path / "kept", workers=1, checkpointEvery=1, keepCheckpoints=2)
    assert midtrain.run(kept).figures["steps"] == 4
    assert sorted(p.name for p in (tmp_path / "kept" / "run" / "checkpoints" / "midtrain" / kept.key()).iterdir()) == [
        "step_3", "step_4"]

    dropped = _setup(tiny_model, tmp_path / "dropped", workers=1, checkpointEvery=1, keepCheckpoints=1,
                     deleteCheckpointsOnCommit=True)
    ckpt_uri = dropped.learner_job(dropped.artifact(), str(tiny_model)).ckpt_uri
    monkeypatch.setenv("POLYA_CRASH_AFTER_STEP", "3")
    with pytest.raises(RuntimeError, match="mid-training failed"):
        midtrain.run(dropped)
    monkeypatch.delenv("POLYA_CRASH_AFTER_STEP")
    assert checkpoint_steps(ckpt_uri) == [3]
    assert sorted(p.name for p in (tmp_path / "dropped" / "run" / "checkpoints" / "midtrain" / dropped.key()).iterdir()) == [
        "step_3"]
    res = midtrain.run(dropped)
    folder = dropped.artifact().local
    resumes = json.loads((folder / "resumes.json").read_text())
    assert [(r["from_step"], r["checkpoint"].rsplit("/", 1)[-1]) for r in resumes] == [(3, "step_3")]
    assert res.figures["steps"] == 4
    assert not (tmp_path / "dropped" / "run" / "checkpoints" / "midtrain" / dropped.key()).exists()
    assert AutoModelForCausalLM.from_pretrained(folder / "model") is not None
    assert midtrain.run(dropped).skipped
