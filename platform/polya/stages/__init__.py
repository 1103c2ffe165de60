"""The five stages of the recipe. Each module has `key(ctx)` and `run(ctx: StageContext) -> StageResult`.

The embedded runner (`polya run`) and the cluster's RayJobs (`polya stage NAME`) call the same
functions through `get_stage`; a stage module that does not exist yet raises `StageNotImplemented`.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

from polya.spec import STAGES


class StageNotImplemented(NotImplementedError):
    pass


@dataclass
class StageResult:
    artifact_uri: str
    figures: dict[str, float] = field(default_factory=dict)
    skipped: bool = False  # the artifact already existed (content-addressed resume)


_MODULES = {"selfgen": "selfgen", "filter": "filter", "midtrain": "midtrain", "grpo": "grpo", "evaluate": "evaluate"}


def get_stage(name: str) -> Callable[..., StageResult]:
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; stages are: {', '.join(STAGES)}")
    try:
        module = importlib.import_module(f"polya.stages.{_MODULES[name]}")
    except ModuleNotFoundError as exc:
        if exc.name != f"polya.stages.{_MODULES[name]}":
            raise
        raise StageNotImplemented(f"stage {name!r} is not implemented in this version of polya") from None
    return module.run
