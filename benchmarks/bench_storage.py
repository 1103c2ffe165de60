"""What a stage pays for an object store: the GRPO stage (SmolLM2-135M-Instruct, bf16 where the CPU computes
it, `--steps` steps, a checkpoint after every step) with `storage.uri` on local disk (the baseline) and on
a real S3 API (moto's server on a loopback port, s3fs), same process, same Ray, runs interleaved
local / S3 / local (the faster local run is the baseline: the first pays warm-up). Prints the stage's wall
time on each, the extra seconds and ratio S3 / local, and per checkpoint: what is uploaded (bytes) and
how long it takes to reach storage.

    .venv/bin/python benchmarks/bench_storage.py [--steps 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the moto server helper
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


def grpo_stage(uri: str, steps: int) -> tuple[float, dict]:
    from polya.artifacts import ArtifactStore
    from polya.spec import PolyaRun
    from polya.stages import grpo
    from polya.stages.common import StageContext

    run = PolyaRun.model_validate({
        "apiVersion": "polya.dev/v1alpha1", "kind": "PolyaRun", "metadata": {"name": "bench-storage"},
        "spec": {"model": {"name": "builtin:smollm2-135m-instruct", "maxModelLen": 2048},
                 "selfGeneration": {"maxTokens": 64},  # not run: only has to fit maxModelLen
                 "dataset": {"source": "builtin:arithmetic", "limit": 64}, "storage": {"uri": uri},
                 "grpo": {"steps": steps, "promptsPerStep": 2, "groupSize": 4, "klCoef": 0.0, "workers": 1,
                          "zeroStage": 0, "microBatchSize": 4, "checkpointEvery": 1, "rollout": {"maxTokens": 64}},
                 "evaluation": {"samples": 1, "k": [1], "benchmarks": [{"name": "a", "source": "builtin:arithmetic"}]}},
    })
    ctx = StageContext(run=run, store=ArtifactStore(uri), stage="grpo", arm="vanilla", progress=False)
    t0 = time.perf_counter()
    result = grpo.run(ctx)
    return time.perf_counter() - t0, result.figures


def checkpoint_bytes(uri: str) -> int:
    from polya import storage

    sizes = storage.listing(storage.join(uri, "checkpoints", "grpo"))
    per_step: dict[str, int] = {}
    for rel, size in sizes.items():  # <key>/step_N/...: the checkpoint's own files, not the parts records
        if "/.parts/" in rel:
            continue
        step = rel.split("/")[1]
        per_step[step] = per_step.get(step, 0) + size
    return max(per_step.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    from cluster import start_s3

    from polya.serve.launch import ensure_ray

    root = Path(tempfile.mkdtemp(prefix="bench-storage-"))
    server = start_s3(root / "s3")
    os.environ.update(server.env())
    bucket = server.make_bucket("bench")
    ensure_ray()
    try:
        runs = {"local-1": str(root / "local-1"), "s3": f"{bucket}/run", "local-2": str(root / "local-2")}
        out = {name: grpo_stage(uri, args.steps) for name, uri in runs.items()}
        size = checkpoint_bytes(runs["s3"])
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)  # ~12 GB of checkpoints (1.9 GB each on local disk)
    base_name = min(("local-1", "local-2"), key=lambda n: out[n][0])
    base, s3 = out[base_name][0], out["s3"][0]
    for name, (seconds, figures) in out.items():
        print(f"{name:8s} stage {seconds:7.1f} s  s/step {figures['s_per_step']:6.2f}  "
              f"checkpoint {figures['checkpoint_s']:6.2f} s each")
    print(f"baseline: {base_name} (local disk, the faster of two)")
    print(f"S3 (moto, loopback): +{s3 - base:.1f} s per stage, ratio S3/local {s3 / base:.3f}")
    print(f"per checkpoint uploaded: {size / 1e6:.0f} MB in {out['s3'][1]['checkpoint_s']:.2f} s "
          f"({size / 1e6 / max(out['s3'][1]['checkpoint_s'], 1e-9):.0f} MB/s)")


if __name__ == "__main__":
    main()
