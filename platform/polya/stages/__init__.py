"""The recipe's stages, one module each (selfgen, filter, midtrain, grpo, evaluate), each with
``run(ctx: StageContext) -> StageResult``. What a stage reads, its settings and its cache key are declared
in the stage table (`polya.recipe`); the embedded runner (`polya run`) and the cluster's RayJobs
(`polya stage NAME`) call the same functions through it.
"""
from __future__ import annotations

from polya.stages.common import StageContext, StageResult

__all__ = ["StageContext", "StageResult"]
