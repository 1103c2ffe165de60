"""Storage across machines, on a real S3 API (moto's server) and a two-node local Ray cluster whose nodes
have separate HOMEs and caches (tests/cluster.py): artifacts and checkpoints reach storage and come back
checked; a GRPO stage that dies after step 2 of 4 resumes at step 3 from the checkpoint in S3 on a fresh
cluster, and no process opens a path of the other node; a missing model or bucket is one line naming the
field. A whole run on s3:// with every stage on separate machines is the end-to-end test's
(tests/operator/test_e2e_cluster.py: each pod a container with its own filesystem).

What the two "nodes" do not emulate: they share this machine's kernel, CPU and filesystem. A path of the
other node is caught by the audit hook (tests/node_audit), which sees Python-level opens and listings,
not reads done in C or Rust (Arrow, safetensors); nor does it emulate network partitions between pods."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cluster import (RayCluster, S3Server, s3_server, s3fs_client,  # noqa: F401 - fixtures
                     start_two_nodes, upload_model)
from conftest import events, tiny_run

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch) -> S3Server:
    """This process reaches the S3 server through the environment alone, as a pod would."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return s3_server


def test_artifact_pushed_by_two_writers_is_fetched_and_checked(s3_env, tmp_path, monkeypatch):
    from polya import storage
    from polya.artifacts import ArtifactStore

    store = ArtifactStore(s3_env.make_bucket("artifacts") + "/run")
    monkeypatch.setenv("POLYA_CACHE", str(tmp_path / "driver"))
    art = store.artifact("grpo", "k1")
    folder = store.begin(art)
    (folder / "steps.json").write_text("[1, 2]")
    worker = storage.staging_dir(art.uri, "learner")  # another process's part of the same artifact
    (worker / "model").mkdir(parents=True)
    (worker / "model" / "weights.bin").write_bytes(b"w" * 1000)
    storage.push(worker, art.uri)
    assert not art.exists()  # no manifest until the driver commits
    manifest = store.commit(art, {"steps": 2})
    assert manifest["files"] == {
        "model/weights.bin": {"size": 1000, "sha256": hashlib.sha256(b"w" * 1000).hexdigest()},
        "steps.json": {"size": 6, "sha256": hashlib.sha256(b"[1, 2]").hexdigest()}}

    monkeypatch.setenv("POLYA_CACHE", str(tmp_path / "other-node"))
    got = art.fetch("model")
    assert got.is_relative_to(tmp_path / "other-node") and (got / "weights.bin").read_bytes() == b"w" * 1000
    s3fs_client(s3_env).pipe(art.uri[len("s3://"):] + "/model/weights.bin", b"x" * 1000)  # same size, other bytes
    monkeypatch.setenv("POLYA_CACHE", str(tmp_path / "third-node"))
    with pytest.raises(storage.StorageError, match="sha256 differs from the manifest"):
        art.fetch("model")


def test_checkpoints_are_found_in_storage_only_when_complete(s3_env):
    from polya import storage
    from polya.rl.learner import CKPT_STATE, checkpoint_steps, latest_checkpoint

    ckpts = s3_env.make_bucket("ckpts") + "/grpo/k1"
    assert latest_checkpoint(ckpts) is None
    for step, complete in ((1, True), (2, True), (3, False)):  # step 3: shards pushed, state never written
        storage.write_json(storage.join(ckpts, f"step_{step}", "ds", "shard.json"), {"step": step})
        if complete:
            storage.write_json(storage.join(ckpts, f"step_{step}", CKPT_STATE), {"step": step})
    assert checkpoint_steps(ckpts) == [1, 2] and latest_checkpoint(ckpts) == ckpts + "/step_2"


def polya_cli(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polya.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def test_missing_model_or_bucket_is_one_line_naming_the_field(s3_env, tmp_path):
    bucket = s3_env.make_bucket("present")
    env = dict(os.environ, **s3_env.env())
    cases = {
        "storage.uri: bucket 'absent' does not exist": ("builtin:smollm2-135m-instruct", "s3://absent/run"),
        "model.name: s3://present/models/none: no config.json there": (f"{bucket}/models/none", f"{bucket}/run"),
        "model.name: no folder /nonexistent/model": ("/nonexistent/model", f"{bucket}/run"),
    }
    for message, (model, uri) in cases.items():
        doc = tiny_run(Path(model), Path("/placeholder"))
        doc["spec"]["model"]["name"], doc["spec"]["storage"]["uri"] = model, uri
        spec = tmp_path / "run.yaml"
        spec.write_text(yaml.safe_dump(doc))
        res = polya_cli(["run", str(spec)], env, tmp_path, timeout=300)
        ours = [line for line in res.stderr.splitlines() if line.startswith("polya: ")]
        assert res.returncode == 1 and "Traceback" not in res.stderr + res.stdout, res.stderr[-2000:]
        # one line: the file, the field path and the reason
        assert len(ours) == 1 and ours[0].startswith(f"polya: {spec}: spec.{message}"), res.stderr[-2000:]


def run_on_cluster(cluster: RayCluster, spec: dict, args: list[str], env: dict[str, str] | None = None
                   ) -> subprocess.CompletedProcess:
    """`polya run SPEC` or `polya stage NAME --arm ARM --spec SPEC` as a driver on the head node."""
    path = cluster.root / "run.yaml"
    path.write_text(yaml.safe_dump(spec))
    argv = [*args, str(path)] if args[0] == "run" else [*args, "--spec", str(path)]
    return polya_cli(argv, dict(cluster.driver_env(), **(env or {})), cluster.root)


def test_grpo_dies_after_step_2_and_resumes_at_step_3_from_s3(s3_server, tiny_model, tmp_path):
    """The RayJob entrypoint (`polya stage grpo`) on a two-node cluster; the learner raises on the worker
    node after its step-2 checkpoint reached S3. The rerun is on a fresh cluster (new HOMEs, empty caches):
    it can only resume from storage."""
    bucket = s3_server.make_bucket("resume")
    upload_model(s3_server, tiny_model, f"{bucket}/models/tiny")
    spec = tiny_run(Path("/placeholder"), Path("/placeholder"), grpo_steps=4)
    spec["spec"]["model"]["name"] = f"{bucket}/models/tiny"
    spec["spec"]["storage"]["uri"] = f"{bucket}/run"
    spec["spec"]["baselines"] = ["vanilla"]  # GRPO straight from the base model
    spec["spec"]["grpo"]["keepCheckpoints"] = 2  # pruned in S3 once steps 3 and 4 are in
    args = ["stage", "grpo", "--arm", "vanilla"]
    client = s3fs_client(s3_server)
    first = start_two_nodes(tmp_path / "first", s3_server.env())
    try:
        crashed = run_on_cluster(first, spec, args, {"POLYA_CRASH_AFTER_STEP": "2"})
        assert crashed.returncode != 0 and "injected crash after step 2" in crashed.stdout + crashed.stderr
        states = client.glob(f"{bucket[len('s3://'):]}/run/checkpoints/grpo/*/step_*/polya_state.json")
        assert sorted(p.split("/")[-2] for p in states) == ["step_1", "step_2"]
        assert first.violations() == []
    finally:
        first.stop()

    fresh = start_two_nodes(tmp_path / "fresh", s3_server.env())
    try:
        res = run_on_cluster(fresh, spec, args)
        assert res.returncode == 0, (res.stdout + res.stderr)[-6000:]
        grpo = next(e for e in events(res.stdout) if e["event"] == "stage_done")
        rows = json.loads(client.cat_file(grpo["artifact"][len("s3://"):] + "/steps.json"))
        # steps 1-2 come from the checkpoint's log; the rerun computed 3 and 4, on the fresh worker node
        assert [(r["step"], r["resumed_from"]) for r in rows] == [(1, 0), (2, 0), (3, 2), (4, 2)]
        assert {r["node"] for r in rows[2:]} == {fresh.worker.node_id}
        # the scheduler came back too: the cosine keeps decaying (a fresh one would repeat step 1's rate)
        lrs = [r["lr"] for r in rows]
        assert lrs == sorted(lrs, reverse=True) and len(set(lrs)) == 4, lrs
        # what a checkpoint is in S3: DeepSpeed's files, the RNG per rank, the state last
        step4 = {p.split("/step_4/")[1] for p in client.find(f"{bucket[len('s3://'):]}/run/checkpoints/grpo")
                 if "/step_4/" in p}
        assert {"rng_0.pt", "polya_state.json", "ds/mp_rank_00_model_states.pt"} <= step4, sorted(step4)
        # keepCheckpoints: 2 on an object store: steps 1 and 2 deleted, whole folders, once 3 and 4 were complete
        left = {p.split("/checkpoints/grpo/")[1].split("/")[1] for p in client.find(f"{bucket[len('s3://'):]}/run/checkpoints/grpo")}
        assert left == {"step_3", "step_4"}, sorted(left)
        assert grpo["figures"]["checkpoint_s"] > 0  # measured on S3 (0 on local storage)
        assert fresh.violations() == []
    finally:
        fresh.stop()
