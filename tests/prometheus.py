"""A real Prometheus server for tests (Debian's `prometheus` 2.42, tools/prometheus/ensure-prometheus.sh).

`start_prometheus(folder, scrape_configs)` writes a config (1 s scrape and evaluation interval) and runs
the server on a free loopback port; `query_range(expr, start, end)` evaluates PromQL the way a Grafana
panel does (a range query over the dashboard's time window, here the test's); `dashboard_queries()` lists
every panel's queries from the chart's dashboard.

`stage_pods_job(discovery)` is the scrape job prometheus-operator generates from the chart's PodMonitor
(helm/polya/templates/podmonitor.yaml), written out by hand because prometheus-operator is not run here.
Debian's Prometheus is built without Kubernetes service discovery, so `PodDiscovery` does that part
against the real API server (pods with the `polya.dev/run` label, their container port named
`polya-metrics`, the run label copied onto the series as podTargetLabels) into a file_sd file.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cluster import free_ports, kill_groups, tail

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "helm" / "polya" / "files" / "dashboard.json"


@dataclass
class Prometheus:
    proc: subprocess.Popen
    port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, **params: Any) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"{path} {params}: {body}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        return self._get("/api/v1/query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=step)["result"]

    def targets(self) -> list[dict]:
        return self._get("/api/v1/targets")["activeTargets"]

    def log_tail(self) -> str:
        return tail(self.folder / "prometheus.log", 40)

    def stop(self) -> None:
        kill_groups([self.proc])


def prometheus_binary() -> str:
    out = subprocess.run(["bash", str(REPO / "tools/prometheus/ensure-prometheus.sh")], capture_output=True,
                         text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"Prometheus could not be installed: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


class PodDiscovery:
    """The scrape targets the chart's PodMonitor selects, kept in a file_sd file (Debian builds Prometheus
    without Kubernetes service discovery, so this thread does its part): every second it lists the pods
    of the API server that carry the ``polya.dev/run`` label and, for each container port named
    ``polya-metrics`` of a pod with an IP, writes a target ``<podIP>:<port>`` labelled with the namespace,
    the pod and the run (podTargetLabels)."""

    def __init__(self, kubeconfig: Path, folder: Path):
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.path = folder / "stage-pods.json"
        self.path.write_text("[]")
        self.seen: set[str] = set()  # every target ever written
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pod-discovery", daemon=True)

    def targets(self) -> list[dict]:
        out = []
        for pod in self.core.list_pod_for_all_namespaces(label_selector="polya.dev/run").items:
            ip = pod.status.pod_ip if pod.status else None
            if not ip or (pod.status.phase or "") != "Running":
                continue
            for c in pod.spec.containers:
                for port in c.ports or []:
                    if port.name == "polya-metrics":
                        out.append({"targets": [f"{ip}:{port.container_port}"],
                                    "labels": {"namespace": pod.metadata.namespace, "pod": pod.metadata.name,
                                               "polya_dev_run": pod.metadata.labels["polya.dev/run"]}})
        return out

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                found = self.targets()
            except Exception:  # noqa: BLE001 - the API server may be going away at the end of a session
                continue
            self.seen |= {t["labels"]["pod"] for t in found}
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(found))
            tmp.replace(self.path)

    def start(self) -> "PodDiscovery":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def stage_pods_job(discovery: PodDiscovery, interval: str = "1s") -> dict:
    """The scrape job the chart's PodMonitor stands for, over `PodDiscovery`'s targets."""
    return {"job_name": "podMonitor/polya-stages", "scrape_interval": interval,
            "file_sd_configs": [{"files": [str(discovery.path)], "refresh_interval": "1s"}]}


def start_prometheus(folder: Path, scrape_configs: list[dict], timeout_s: float = 60) -> Prometheus:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_ports(1)[0]
    log = open(folder / "prometheus.log", "ab")
    proc = subprocess.Popen([prometheus_binary(), f"--config.file={folder / 'prometheus.yml'}",
                             f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    prom = Prometheus(proc, port, folder)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited: {prom.log_tail()}")
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as r:
                if r.status == 200:
                    return prom
        except OSError:
            time.sleep(0.5)
    prom.stop()
    raise TimeoutError(f"prometheus not ready: {prom.log_tail()}")


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel of the chart's Grafana dashboard."""
    dash = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dash["panels"] for t in p.get("targets", []) if t.get("expr")]


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
