"""Operator scale: N PolyaRuns applied at once; time until every run has its first RayJob, and the
operator's peak memory. Runs against the real local API server (tools/kube) with KubeRay's CRDs.

Baseline, measured in the same run: the time the API server itself takes to accept the N PolyaRuns
(their creation), so the ratio says how much the operator adds on top of bare API throughput.

    .venv/bin/python benchmarks/bench_operator_scale.py [--runs 200 1000]

Each row also gives the operator's exit time after SIGTERM (a Deployment's pod gets 30 s). Every process
the benchmark starts (operator, API server, etcd, controller manager) is stopped when it ends, also when
it fails.
"""
from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import kube as K  # noqa: E402  (the tests' control-plane helpers)


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, nargs="+", default=[50, 200])
    args = ap.parse_args()
    reason = K.missing_reason()
    if reason:
        sys.exit(f"cannot run: {reason}")
    from kubernetes import client, config

    base = yaml.safe_load((REPO / "k8s/examples/polya-run-local.yaml").read_text())
    state = Path(tempfile.mkdtemp(prefix="polya-bench-kube-"))
    rows = []
    op: subprocess.Popen | None = None
    print("runs | apply (baseline: API server accepts N runs) | until every run has its first RayJob | ratio "
          "| runs/s | operator peak RSS | exit after SIGTERM", flush=True)
    try:
        kubeconfig = K.start(state)
        api = config.new_client_from_config(str(kubeconfig))
        K.install_crds(api)
        custom = client.CustomObjectsApi(api)
        core = client.CoreV1Api(api)
        for n in args.runs:
            ns = f"bench-{n}"
            core.create_namespace({"metadata": {"name": ns}})
            env = dict(os.environ, KUBECONFIG=str(kubeconfig), POLYA_LOG_LEVEL="WARNING")
            op = subprocess.Popen([sys.executable, "-m", "polya_operator.main", "--namespace", ns,
                                   "--metrics-port", "0", "--liveness", "http://127.0.0.1:18191/healthz"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(3)  # the operator is up and watching

            def create(i: int) -> None:
                doc = copy.deepcopy(base)
                doc["metadata"] = {"name": f"run-{i:04d}", "namespace": ns}
                custom.create_namespaced_custom_object("polya.dev", "v1alpha1", ns, "polyaruns", doc)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(create, range(n)))
            t_apply = time.perf_counter() - t0

            def have_jobs() -> bool:
                items = custom.list_namespaced_custom_object("ray.io", "v1", ns, "rayjobs")["items"]
                return len({j["metadata"]["labels"]["polya.dev/run"] for j in items}) >= n

            K.wait_for(have_jobs, timeout=900, interval=0.5, what=f"{n} first RayJobs")
            t_all = time.perf_counter() - t0
            rss = peak_rss_mb(op.pid)
            t_term = time.perf_counter()
            op.terminate()  # what a Deployment's pod gets first; the kubelet's SIGKILL follows after 30 s
            try:
                op.wait(60)
                t_exit = time.perf_counter() - t_term
            except subprocess.TimeoutExpired:
                t_exit = float("inf")
            rows.append((n, t_apply, t_all, rss, t_exit))
            op = None
            _row(*rows[-1])  # as soon as it is measured: a later row that fails loses nothing
    finally:
        if op is not None and op.poll() is None:  # a failed row: never leave the operator behind
            op.kill()
            op.wait(10)
        K.stop(state)
        shutil.rmtree(state, ignore_errors=True)
    targets = all(t_all < 60 and rss < 300 and t_exit < 10 for n, _, t_all, rss, t_exit in rows if n == 1000)
    print(f"targets at 1,000 runs (< 60 s, < 300 MiB, exit < 10 s): {'met' if targets else 'NOT met'}")


def _row(n: int, t_apply: float, t_all: float, rss: float, t_exit: float) -> None:
    print(f"{n:4d} | {t_apply:8.2f} s | {t_all:8.2f} s | {t_all / t_apply:5.2f}x | {n / t_all:6.1f} "
          f"| {rss:6.0f} MiB | {t_exit:5.1f} s", flush=True)


if __name__ == "__main__":
    main()
