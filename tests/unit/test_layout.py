"""The repository layout the brief fixes, and the stdlib `platform` module never being shadowed."""
from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_required_top_level_layout():
    for name in ["pyproject.toml", "platform", "operators", "k8s", "helm", "tests", "README.md", "Makefile", ".ci/run"]:
        assert (REPO / name).exists(), name


def test_platform_is_a_source_root_without_init():
    assert not (REPO / "platform" / "__init__.py").exists()
    assert (REPO / "platform" / "polya" / "__init__.py").exists()


def test_stdlib_platform_not_shadowed_from_repo_root():
    code = "import platform, polya; print(platform.system(), hasattr(platform, 'python_version'))"
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["Linux", "True"]
