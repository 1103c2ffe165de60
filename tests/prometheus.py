"""A real Prometheus server for tests (Debian's `prometheus` 2.42, tools/prometheus/ensure-prometheus.sh).

`start_prometheus(folder, scrape_configs)` writes a config (1 s scrape and evaluation interval) and runs
the server on a free loopback port; `query_range(expr, start, end)` evaluates PromQL the way a Grafana
panel does (a range query over the dashboard's time window, here the test's); `dashboard_queries()` lists
every panel's queries from the chart's dashboard.

`stage_pods_job(kubeconfig)` is the scrape job prometheus-operator generates from the chart's PodMonitor
(helm/polya/templates/podmonitor.yaml), written out by hand because prometheus-operator is not run here:
Kubernetes pod discovery against the API server, keep pods that carry the `polya.dev/run` label, keep
their container port named `polya-metrics`, and copy the run label onto the series (podTargetLabels).
"""
from __future__ import annotations

import json
import shutil
import subprocess
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


def stage_pods_job(kubeconfig: Path, interval: str = "1s") -> dict:
    """The scrape job the chart's PodMonitor stands for (see the module docstring)."""
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
    return {
        "job_name": "podMonitor/polya-stages",
        "scrape_interval": interval,
        "kubernetes_sd_configs": [{
            "role": "pod", "api_server": cluster["server"],
            "tls_config": {"ca_file": cluster["certificate-authority"]},
            "authorization": {"credentials": user["token"]},
        }],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_labelpresent_polya_dev_run"], "regex": "true", "action": "keep"},
            {"source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": "polya-metrics",
             "action": "keep"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_pod_label_polya_dev_run"], "target_label": "polya_dev_run"},
        ],
    }


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
