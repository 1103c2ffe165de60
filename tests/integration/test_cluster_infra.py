"""Self-test of tests/cluster.py: moto's S3 server is reachable from its env alone, each node of the local
two-node Ray cluster runs its tasks and actors with its own HOME/POLYA_CACHE, and the audit hook stops (and
logs) a process of one node that opens a file of the other node."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cluster import RayCluster, ray_two_nodes, s3_server  # noqa: F401 - fixtures are used by name

pytestmark = pytest.mark.slow

#: env keys every probe reports
KEYS = ["HOME", "POLYA_CACHE", "PYTHONPATH", "POLYA_AUDIT_NODE", "AWS_ENDPOINT_URL", "RAY_AUTH_MODE"]

S3_ROUND_TRIP = """
import hashlib, json, os, sys
import fsspec
bucket, size = sys.argv[1], int(sys.argv[2])
payload = os.urandom(size)
with fsspec.open(f"s3://{bucket}/round/trip.bin", "wb") as f:
    f.write(payload)
fs, path = fsspec.core.url_to_fs(f"s3://{bucket}/round/trip.bin")
back = fs.cat_file(path)
print("RESULT", json.dumps({"sent": hashlib.sha256(payload).hexdigest(), "got": hashlib.sha256(back).hexdigest(),
                            "size": fs.size(path), "listing": fsspec.filesystem("s3").ls(f"{bucket}/round")}))
"""

ENV_PROBE = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
keys = json.loads(sys.argv[3])

def snapshot():
    site = sys.modules.get("sitecustomize")
    return {**{k: os.environ.get(k) for k in keys}, "pid": os.getpid(), "cwd": os.getcwd(),
            "node_id": ray.get_runtime_context().get_node_id(), "hook": getattr(site, "__file__", None)}

@ray.remote
def task():
    return snapshot()

@ray.remote
class Actor:
    def env(self):
        return snapshot()

ray.init(log_to_driver=False)
out = {"driver": snapshot()}
for name, node_id in (("head", sys.argv[1]), ("worker", sys.argv[2])):
    pin = NodeAffinitySchedulingStrategy(node_id, soft=False)
    out[f"{name}/task cpu=0"] = ray.get(task.options(num_cpus=0, scheduling_strategy=pin).remote())
    out[f"{name}/actor cpu=0"] = ray.get(Actor.options(num_cpus=0, scheduling_strategy=pin).remote().env.remote())
    if name == "worker":  # the head has no CPUs
        out[f"{name}/task cpu=1"] = ray.get(task.options(num_cpus=1, scheduling_strategy=pin).remote())
        out[f"{name}/actor cpu=1"] = ray.get(Actor.options(num_cpus=1, scheduling_strategy=pin).remote().env.remote())
print("RESULT", json.dumps(out))
"""

OPEN_PROBE = """
import json, os, sys
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

@ray.remote(num_cpus=0)
def attempt(path, listing):
    try:
        return {"pid": os.getpid(), "ok": sorted(os.listdir(path)) if listing else open(path).read()}
    except PermissionError as err:
        return {"pid": os.getpid(), "denied": str(err)}

ray.init(log_to_driver=False)
out = {}
for label, node_id, path, listing in json.loads(sys.argv[1]):
    pin = NodeAffinitySchedulingStrategy(node_id, soft=False)
    out[label] = ray.get(attempt.options(scheduling_strategy=pin).remote(path, listing))
print("RESULT", json.dumps(out))
"""


def run_script(script: str, env: dict[str, str], cwd, *args: str, timeout: float = 240) -> dict:
    """Run `script` with `env` in a fresh interpreter; return the JSON it printed after "RESULT "."""
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, cwd=cwd, capture_output=True, text=True,
                         timeout=timeout)
    results = [line[len("RESULT "):] for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and results, f"exit {out.returncode}\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return json.loads(results[-1])


def test_s3_round_trip_with_only_the_servers_env(s3_server, tmp_path):
    bucket = s3_server.make_bucket("infra-selftest")
    assert bucket == "s3://infra-selftest"
    # nothing of this process's env but what S3Server.env() gives (HOME: an empty one, so no ~/.aws is read)
    env = {**s3_server.env(), "HOME": str(tmp_path)}
    got = run_script(S3_ROUND_TRIP, env, tmp_path, "infra-selftest", str(1 << 20))
    assert got["sent"] == got["got"]
    assert got["size"] == 1 << 20
    assert got["listing"] == ["infra-selftest/round/trip.bin"]
    log = s3_server.log.read_text()
    assert "PUT /infra-selftest/round/trip.bin" in log  # it really went through the server


def test_each_node_runs_its_tasks_and_actors_with_its_own_home(ray_two_nodes: RayCluster, s3_server):
    cluster = ray_two_nodes
    head, worker = cluster.head, cluster.worker
    seen = run_script(ENV_PROBE, cluster.driver_env(), cluster.root, head.node_id, worker.node_id, json.dumps(KEYS))
    hook_dir = str(cluster.head.env["PYTHONPATH"]).split(os.pathsep)[0]
    for where, snap in seen.items():
        node = worker if where.startswith("worker") else head
        assert snap["node_id"] == node.node_id, where
        assert (snap["HOME"], snap["POLYA_CACHE"]) == (str(node.home), str(node.cache)), where
        assert snap["POLYA_AUDIT_NODE"] == node.name, where
        assert snap["PYTHONPATH"].split(os.pathsep)[0] == hook_dir, where
        assert snap["hook"] == os.path.join(hook_dir, "sitecustomize.py"), where
        assert snap["AWS_ENDPOINT_URL"] == s3_server.endpoint, where  # the extra env reached every process
        assert snap["RAY_AUTH_MODE"] == "disabled", where
    pids = {name: {snap["pid"] for where, snap in seen.items() if where.startswith(name)} for name in ("head", "worker")}
    assert not pids["head"] & pids["worker"] and seen["driver"]["pid"] not in pids["head"] | pids["worker"]
    assert head.home != worker.home and head.temp_dir != worker.temp_dir
    assert cluster.violations() == []


def test_a_worker_task_cannot_open_the_heads_files(ray_two_nodes: RayCluster):
    cluster = ray_two_nodes
    head, worker = cluster.head, cluster.worker
    (head.cache / "weights.txt").write_text("head only")
    (worker.cache / "weights.txt").write_text("worker's own")
    attempts = [
        ["worker opens head file", worker.node_id, str(head.cache / "weights.txt"), False],
        ["worker lists head home", worker.node_id, str(head.home), True],
        ["worker opens head temp", worker.node_id, str(head.temp_dir / "ray_current_cluster"), False],
        ["worker opens own file", worker.node_id, str(worker.cache / "weights.txt"), False],
        ["head opens worker file", head.node_id, str(worker.cache / "weights.txt"), False],
        ["head opens own file", head.node_id, str(head.cache / "weights.txt"), False],
    ]
    got = run_script(OPEN_PROBE, cluster.driver_env(), cluster.root, json.dumps(attempts))
    assert got["worker opens own file"] == {"pid": got["worker opens own file"]["pid"], "ok": "worker's own"}
    assert got["head opens own file"]["ok"] == "head only"
    denied = {label: got[label] for label in ("worker opens head file", "worker lists head home",
                                              "worker opens head temp", "head opens worker file")}
    for label, result in denied.items():
        assert "belongs to another node" in result.get("denied", ""), (label, result)
    lines = cluster.violations()
    assert len(lines) == len(denied), lines  # one line per refused access, none for the allowed ones
    expected = {(label.split()[0], str(got[label]["pid"]), "os.listdir" if listing else "open", path)
                for label, _, path, listing in attempts if label in denied}
    assert {tuple(line.split()[:4]) for line in lines} == expected
    assert all(".py:" in line.split(maxsplit=4)[4] for line in lines)  # each names the Python frames it came from
