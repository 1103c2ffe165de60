"""Serve application builders for a KubeRay RayService (`serveConfigV2` import paths).

``polya.serve.entry:rollout_app`` and ``polya.serve.entry:reward_app`` take ``{"spec": path}`` (the
run's manifest, mounted from the operator's ConfigMap) and build the same apps `polya serve` runs.
"""
from __future__ import annotations

from typing import Any


def _run(args: dict[str, Any]):
    from polya.validation import load_run_file

    return load_run_file(args["spec"])


def rollout_app(args: dict[str, Any]):
    from polya.models import resolve
    from polya.serve.rollout import RolloutServer
    from polya.stages.common import engine_config

    run = _run(args)
    ev = run.spec.evaluation
    model = args.get("model") or run.spec.model.name
    block = run.spec.grpo.rollout.model_copy(update={"replicas": ev.replicas, "gpusPerReplica": ev.gpusPerReplica})
    cfg = engine_config(run, resolve(model), block, served_name=run.metadata.name)
    options = {"num_cpus": 0, "num_gpus": ev.gpusPerReplica} if ev.gpusPerReplica else {"num_cpus": 0}
    return RolloutServer.options(num_replicas=ev.replicas, ray_actor_options=options).bind(
        cfg.__dict__, max_tokens_limit=ev.maxTokens)


def reward_app(args: dict[str, Any]):
    from polya.serve.reward import RewardServer

    run = _run(args)
    rm = run.spec.filtering.rewardModel
    cfg = {"kind": rm.kind, "name": rm.name}
    if rm.kind == "judge":
        from polya.models import resolve
        from polya.stages.common import engine_config

        cfg["engine"] = engine_config(run, resolve(rm.name), run.spec.selfGeneration).__dict__
    options = {"num_cpus": 0, "num_gpus": rm.gpusPerReplica} if rm.gpusPerReplica else {"num_cpus": 0}
    return RewardServer.options(num_replicas=rm.replicas, ray_actor_options=options).bind(cfg)
