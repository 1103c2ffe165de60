"""House rules that keep the code navigable, checked on the source tree (ast, no imports):
short functions, no private names imported across modules, floors that point down, and stage/arm names
written in one module only (`polya.recipe`), so adding a stage is one table entry plus its module."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

from polya.recipe import ARMS, STAGES

PACKAGE = REPO / "platform" / "polya"
OPERATOR = REPO / "operators" / "polya_operator"
MAX_LINES = 60
NAMES = {str(s) for s in STAGES} | {str(a) for a in ARMS}

#: literals equal to an arm's name that mean something else (file, literal): why
NOT_ARM_NAMES = {
    ("platform/polya/cli.py", "polya"): "the command's own name (argparse prog)",
    ("platform/polya/serve/rollout.py", "polya"): "OpenAI /v1/models owned_by",
    ("platform/polya/crd.py", "polya"): "the CRD's kubectl category",
    ("platform/polya/storage.py", "polya"): "the cache folder ~/.cache/polya",
}


def sources(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in root.rglob("*.py"))


def rel(p: Path) -> str:
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def long_functions(files: list[Path]) -> list[str]:
    return [f"{rel(p)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in files for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_LINES]


def private_imports(files: list[Path]) -> list[str]:
    return [f"{rel(p)}: from {n.module} import {a.name}" for p in files
            for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ImportFrom) and n.module
            for a in n.names if a.name.startswith("_") and n.module != "__future__"]


def stage_imports(files: list[Path]) -> list[str]:
    out = []
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            mods = [n.module] if isinstance(n, ast.ImportFrom) and n.module else \
                [a.name for a in n.names] if isinstance(n, ast.Import) else []
            out += [f"{rel(p)} imports {m}" for m in mods if m == "polya.stages" or m.startswith("polya.stages.")]
    return out


def name_literals(files: list[Path]) -> tuple[list[str], set[tuple[str, str]]]:
    """(stage/arm names written as literals, the exempted ones seen)."""
    found, excused = [], set()
    for p in files:
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in NAMES:
                if (rel(p), n.value) in NOT_ARM_NAMES:
                    excused.add((rel(p), n.value))
                else:
                    found.append(f"{rel(p)}:{n.lineno} {n.value!r}")
    return found, excused


def test_no_function_is_longer_than_60_lines():
    assert long_functions(sources(PACKAGE, OPERATOR)) == []


def test_no_private_name_is_imported_from_another_module():
    assert private_imports(sources(PACKAGE, OPERATOR)) == []


def test_lower_floors_never_import_the_stages():
    assert stage_imports(sources(*(PACKAGE / d for d in ("analysis", "rl", "engines", "serve")))) == []


def test_stage_and_arm_names_are_written_in_the_stage_table_only():
    found, excused = name_literals([p for p in sources(PACKAGE, OPERATOR) if p != PACKAGE / "recipe.py"])
    assert found == []
    assert set(NOT_ARM_NAMES) <= excused, "an exemption no longer needed: remove it"


def test_the_scanners_find_planted_violations(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from polya.stages.grpo import _hidden\nimport polya.stages\n\n"
                   "def f():\n" + "    x = 1\n" * 60 + "    return 'grpo', 'star'\n")
    assert len(long_functions([bad])) == 1
    assert private_imports([bad]) == [f"{bad}: from polya.stages.grpo import _hidden"]
    assert len(stage_imports([bad])) == 2
    assert [f.split()[-1] for f in name_literals([bad])[0]] == ["'grpo'", "'star'"]
    good = tmp_path / "good.py"
    good.write_text("from polya.recipe import Stage\n\ndef f():\n    return Stage.GRPO, 'grpo-run'\n")
    assert long_functions([good]) == private_imports([good]) == stage_imports([good]) == name_literals([good])[0] == []
