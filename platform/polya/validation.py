"""Turn manifests into validated `PolyaRun`s, with errors that name the field path and the fix.

`UserError` is the one type for mistakes in what a user gave (a file, a spec field, a command-line value):
its message names the file or field and the fix, one line per problem, and `polya` prints it without a
traceback (exit code 1). `polya.storage.StorageError` and `polya.models.ModelNotAvailable` follow the same
rule."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from polya.spec import PolyaRun


class UserError(Exception):
    """A mistake in the user's input; ``str(exc)`` names the file or field and the fix (one line per problem)."""

    @property
    def lines(self) -> list[str]:
        return [line for line in str(self).splitlines() if line.strip()] or [type(self).__name__]


class SpecError(UserError, ValueError):
    """A manifest that cannot be read or is not a valid PolyaRun: one line per problem, each naming the file
    (and the field). A ValueError too, for callers that caught the ValueError `load_run_file` raised before."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.heuristics.count
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _model_at(path: tuple[Any, ...], root: type[BaseModel] = PolyaRun) -> type[BaseModel] | None:
    """The pydantic model that owns the object at ``path`` (to suggest field names)."""
    from polya.spec import PolyaRunSpec
    from polya.sweep import SweepArm

    model: Any = root
    for part in path:
        if isinstance(part, int):
            continue
        if model is SweepArm and part == "set":  # an arm's overrides are paths of the run's spec
            model = PolyaRunSpec
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            # list[Model]
            for c in candidates:
                for inner in getattr(c, "__args__", ()):
                    if isinstance(inner, type) and issubclass(inner, BaseModel):
                        model = inner
            if model is None:
                return None
    return model


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    # pydantic adds union-branch tags ('int', 'constrained-int', 'function-after[...]') to locations
    out = []
    for part in loc:
        if isinstance(part, str) and ("[" in part or part in {"int", "float", "str", "bool", "list", "dict",
                                                               "constrained-int", "constrained-float", "none"}):
            continue
        out.append(part)
    return tuple(out)


def format_errors(exc: ValidationError, root: type[BaseModel] = PolyaRun) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(root)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1], root)
            known = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown field {loc[-1]!r}"
            msg += f"; did you mean {close[0]!r}?" if close else ""
            if known:
                msg += f" (fields here: {', '.join(known)})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        elif isinstance(err.get("input"), (str, int, float, bool)) \
                and len(repr(err["input"])) <= 60 and repr(err["input"]) not in msg:
            msg += f" (got {err['input']!r})"  # what was written, beside what is wanted
        errors.append(FieldError(path, " ".join(msg.split())))  # one line, whatever the message held
    return errors


def validate_doc(doc: Any) -> tuple[PolyaRun | None, list[FieldError]]:
    if not isinstance(doc, dict):
        return None, [FieldError("(root)", f"the document is a {type(doc).__name__}, not a mapping: a PolyaRun has "
                                           "apiVersion, kind, metadata and spec at the top level")]
    try:
        return PolyaRun.model_validate(doc), []
    except ValidationError as exc:
        return None, format_errors(exc)


def validate_sweep_doc(doc: Any) -> tuple[Any, list[FieldError]]:
    """A PolyaSweep manifest: (the sweep, []) or (None, its field errors; an arm's override is named
    ``spec.arms[i].set.<path>``)."""
    from polya.sweep import PolyaSweep

    if not isinstance(doc, dict):
        return None, [FieldError("(root)", f"the document is a {type(doc).__name__}, not a mapping: a PolyaSweep has "
                                           "apiVersion, kind, metadata and spec at the top level")]
    try:
        return PolyaSweep.model_validate(doc), []
    except ValidationError as exc:
        return None, format_errors(exc, PolyaSweep)


def load_manifest(path: str | Path) -> list[Any]:
    """YAML documents of a file (empty documents skipped); a file that cannot be read or parsed raises
    `SpecError` naming the file (and the line of a YAML error)."""
    def fail(why: str) -> SpecError:
        return SpecError([f"{path}: {why}"])

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise fail("no such file (check the path)") from exc
    except IsADirectoryError as exc:
        raise fail("is a folder, not a YAML manifest") from exc
    except PermissionError as exc:
        raise fail("permission denied (make the file readable)") from exc
    except UnicodeDecodeError as exc:
        raise fail("not a UTF-8 text file (a PolyaRun manifest is YAML)") from exc
    except OSError as exc:
        raise fail(f"cannot read it: {exc.strerror or exc}") from exc
    try:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: no line, a character position
            where = f" at character {exc.position + 1}"
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc).splitlines()[0]
        raise fail(f"not valid YAML{where}: {problem} (fix the syntax)") from exc


def run_documents(docs: list[Any]) -> list[Any]:
    """The documents of a manifest that are PolyaRuns (or claim no kind, or are not mappings: refused later)."""
    return [d for d in docs if not isinstance(d, dict) or d.get("kind", "PolyaRun") == "PolyaRun"]


def sweep_documents(docs: list[Any]) -> list[dict]:
    """The documents of a manifest that are PolyaSweeps."""
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "PolyaSweep"]


def load_sweep_file(path: str | Path):
    """The single PolyaSweep in ``path``; raises `SpecError` with one line per field error (file and field)."""
    docs = load_manifest(path)
    sweeps = sweep_documents(docs)
    if len(sweeps) != 1:
        empty = " (the file is empty)" if not docs else " (check kind: PolyaSweep)" if not sweeps else ""
        raise SpecError([f"{path}: expected exactly one PolyaSweep document, found {len(sweeps)}{empty}"])
    sweep, errors = validate_sweep_doc(sweeps[0])
    if errors:
        raise SpecError([f"{path}: {e}" for e in errors])
    return sweep


def load_run_file(path: str | Path) -> PolyaRun:
    """The single PolyaRun in ``path``; raises `SpecError` (a ValueError) with one line per field error, each
    naming the file and the field path."""
    docs = load_manifest(path)
    runs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "PolyaRun"] or docs
    if len(runs) != 1:
        empty = " (the file is empty)" if not docs else ""
        raise SpecError([f"{path}: expected exactly one PolyaRun document, found {len(runs)}{empty}"])
    run, errors = validate_doc(runs[0])
    if errors:
        raise SpecError([f"{path}: {e}" for e in errors])
    assert run is not None
    return run
