"""Turn manifests into validated `PolyaRun`s, with errors that name the field path and the fix."""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from polya.spec import PolyaRun


@dataclass(frozen=True)
class FieldError:
    path: str  # e.g. spec.heuristics.count
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _model_at(path: tuple[Any, ...]) -> type[BaseModel] | None:
    """The pydantic model that owns the object at ``path`` (to suggest field names)."""
    model: Any = PolyaRun
    for part in path:
        if isinstance(part, int):
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


def format_errors(exc: ValidationError) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False):
        loc = _clean_loc(tuple(err["loc"]))
        path = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[") or "(root)"
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        if err["type"] == "extra_forbidden":
            owner = _model_at(loc[:-1])
            known = sorted(owner.model_fields) if owner else []
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            msg = f"unknown field {loc[-1]!r}"
            msg += f"; did you mean {close[0]!r}?" if close else ""
            if known:
                msg += f" (fields here: {', '.join(known)})"
        elif err["type"] == "missing":
            msg = "required field is missing"
        errors.append(FieldError(path, msg))
    return errors


def validate_doc(doc: Any) -> tuple[PolyaRun | None, list[FieldError]]:
    if not isinstance(doc, dict):
        return None, [FieldError("(root)", f"expected a mapping, got {type(doc).__name__}")]
    try:
        return PolyaRun.model_validate(doc), []
    except ValidationError as exc:
        return None, format_errors(exc)


def load_manifest(path: str | Path) -> list[Any]:
    """YAML documents of a file (empty documents skipped)."""
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_run_file(path: str | Path) -> PolyaRun:
    """The single PolyaRun in ``path``; raises ValueError with every field error listed."""
    docs = [d for d in load_manifest(path) if isinstance(d, dict) and d.get("kind") == "PolyaRun"] or load_manifest(path)
    if len(docs) != 1:
        raise ValueError(f"{path}: expected exactly one PolyaRun document, found {len(docs)}")
    run, errors = validate_doc(docs[0])
    if errors:
        raise ValueError(f"{path}: invalid PolyaRun\n" + "\n".join(f"  {e}" for e in errors))
    assert run is not None
    return run
