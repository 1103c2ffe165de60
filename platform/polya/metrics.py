"""One catalogue of the metric names Polya exports (Prometheus). Dashboards may query only these."""
from __future__ import annotations

import os

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_registry: CollectorRegistry = REGISTRY

STAGE_DURATION = Histogram("polya_stage_duration_seconds", "Wall time of a completed stage", ["stage", "arm"],
                           buckets=(10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400))
STAGE_RUNS = Counter("polya_stage_runs_total", "Stage executions by outcome", ["stage", "arm", "outcome"])
TOKENS_GENERATED = Counter("polya_tokens_generated_total", "Completion tokens generated", ["stage"])
TOKENS_PER_SECOND = Gauge("polya_generation_tokens_per_second", "Generation throughput of the last batch", ["stage"])
VERIFY_TOTAL = Counter("polya_verify_total", "Answers verified, by status", ["stage", "status"])
VERIFY_RATE = Gauge("polya_verify_correct_ratio", "Share of verified answers that are correct", ["stage"])
FILTER_KEEP_RATE = Gauge("polya_filter_keep_ratio", "Kept (question, heuristic) groups / all groups", ["arm"])
SCORER_LATENCY = Histogram("polya_scorer_latency_seconds", "Reward-model scoring latency per batch", ["kind"])
VENDI = Gauge("polya_vendi_score", "Vendi score of kept traces", ["arm"])
PASS_AT_K = Gauge("polya_eval_pass_at_k", "pass@k in percent", ["arm", "benchmark", "k"])
COMPOSITION_RATE = Gauge("polya_composition_ratio", "Share of chains combining >= 2 heuristics", ["arm"])
GRPO_REWARD = Gauge("polya_grpo_reward_mean", "Mean reward of the last GRPO step", ["arm"])
GRPO_KL = Gauge("polya_grpo_kl", "KL to the reference policy at the last GRPO step", ["arm"])
GRPO_STEP = Gauge("polya_grpo_step", "Last completed GRPO step", ["arm"])

ALL_NAMES = sorted(
    m._name + ("_total" if isinstance(m, Counter) else "")
    for m in [STAGE_DURATION, STAGE_RUNS, TOKENS_GENERATED, TOKENS_PER_SECOND, VERIFY_TOTAL, VERIFY_RATE,
              FILTER_KEEP_RATE, SCORER_LATENCY, VENDI, PASS_AT_K, COMPOSITION_RATE, GRPO_REWARD, GRPO_KL, GRPO_STEP]
)


def serve_metrics(port: int, addr: str = "127.0.0.1") -> None:
    start_http_server(port, addr=addr)


def serve_stage_metrics_from_env() -> float:
    """Start the stage process's exporter when ``POLYA_METRICS_PORT`` is set (the operator sets it on
    stage pods; ``POLYA_METRICS_HOST`` defaults to all interfaces there). Returns how long the process
    should keep serving after its stage ends (``POLYA_METRICS_LINGER_S``), so a scrape sees the figures
    set at the end of the stage (pass@k, keep rate) before the pod goes away."""
    port = int(os.environ.get("POLYA_METRICS_PORT") or 0)
    if not port:
        return 0.0
    serve_metrics(port, addr=os.environ.get("POLYA_METRICS_HOST", "0.0.0.0"))
    return float(os.environ.get("POLYA_METRICS_LINGER_S") or 0)


def prime(stage: str, arm: str) -> None:
    """Create this stage's counter and histogram series at zero, so that the first increase is a change a
    ``rate()`` sees (a series born at its final value has no rate)."""
    for outcome in ("succeeded", "failed", "cached"):
        STAGE_RUNS.labels(stage, arm, outcome)
    STAGE_DURATION.labels(stage, arm)
    TOKENS_GENERATED.labels(stage)
