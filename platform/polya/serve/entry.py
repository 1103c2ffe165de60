"""Serve application builders for a KubeRay RayService (`serveConfigV2` import paths).

``polya.serve.entry:rollout_app`` and ``polya.serve.entry:reward_app`` take ``{"spec": path}`` (the
run's manifest, mounted from the operator's ConfigMap) and build the same apps `polya serve` runs, each
configured by its own block: the rollout app by ``evaluation``, the reward app by ``filtering.rewardModel``.
"""
from __future__ import annotations

from typing import Any

from polya.serve.launch import actor_options


def _run(args: dict[str, Any]):
    from polya.validation import load_run_file

    return load_run_file(args["spec"])


def rollout_app(args: dict[str, Any]):
    from polya.engines.base import EngineConfig
    from polya.serve.rollout import RolloutServer

    run = _run(args)
    ev = run.spec.evaluation
    model = args.get("model") or run.spec.model.name
    cfg = EngineConfig.from_spec(run.spec.model, ev, model, run.spec.seed, served_name=run.metadata.name)
    return RolloutServer.options(num_replicas=ev.replicas, ray_actor_options=actor_options(ev.gpusPerReplica)).bind(
        cfg, max_tokens_limit=ev.maxTokens)


def reward_app(args: dict[str, Any]):
    from polya.reward import ScorerConfig
    from polya.serve.reward import RewardServer

    run = _run(args)
    rm = run.spec.filtering.rewardModel
    cfg = ScorerConfig.from_spec(rm, run.spec.model, run.spec.seed)
    return RewardServer.options(num_replicas=rm.replicas, ray_actor_options=actor_options(rm.gpusPerReplica)).bind(cfg)
