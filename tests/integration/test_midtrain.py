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


def _setup(tiny_model, tmp_path, **mt):
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
             "completion": f"{i} + {i} = {2 * i}. \\boxed{{{2 * i}}}", "correct": True, "adherence": 0.5} for i in range(8)]
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
    assert res.figures["loss_last"] < res.figures["loss_first"]  # it learns the traces
    trained = AutoModelForCausalLM.from_pretrained(folder / "model")
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(trained.model.embed_tokens.weight, base.model.embed_tokens.weight)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "midtrain" / ctx.key()).iterdir())
    assert ckpts == ["step_2", "step_4"]
    assert midtrain.run(ctx).skipped


def test_killed_sft_resumes_to_the_same_losses(ray_session, tiny_model, tmp_path, monkeypatch):
    """Crash after step 3 (checkpoint at 2), rerun: steps 3-4 match an uninterrupted run."""
    from polya.stages import midtrain

    clean = _setup(tiny_model, tmp_path / "clean")
    midtrain.run(clean)
    reference = json.loads((clean.artifact().local / "train_log.json").read_text())

    crashed = _setup(tiny_model, tmp_path / "crashed")
    monkeypatch.setenv("POLYA_CRASH_AFTER_STEP", "3")
    with pytest.raises(RuntimeError, match="mid-training failed"):
        midtrain.run(crashed)
    monkeypatch.delenv("POLYA_CRASH_AFTER_STEP")
    resumed = midtrain.run(crashed)
    log = json.loads((crashed.artifact().local / "train_log.json").read_text())
    assert resumed.figures["steps"] == 4
    assert [r["step"] for r in log["log"]] == [1, 2, 3, 4]
    for a, b in zip(log["log"], reference["log"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9)
