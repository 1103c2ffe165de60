"""Storage-across-machines test infrastructure: a real S3 API and a two-node Ray cluster on one host.

- `start_s3`: moto's S3 server (`python -m moto.server`) on a free loopback port. Processes reach it
  through the variables of `S3Server.env()` alone (s3fs/aiobotocore and pyarrow.fs both honour
  AWS_ENDPOINT_URL).
- `start_two_nodes`: a head (0 CPUs) and a worker started with `ray start --block`, each with its own
  HOME, POLYA_CACHE and Ray temp dir, every port of theirs distinct and free, and the audit hook of
  tests/node_audit/ in every Python process: a process of one node that opens or lists a path under
  the other node's HOME or temp dir gets PermissionError, and the attempt lands in `violations()`.

Ray 2.60 notes (checked in ray/_private/node.py, services.py and scripts/scripts.py):
- `--temp-dir` is honoured per node ("Can be specified per node"); a worker without it would reuse the
  head's. Session dirs hold AF_UNIX sockets (max 107 bytes), so temp dirs are short dirs in /tmp, not
  under pytest's long tmp_path; stop() copies their logs next to the node's home and removes them.
- `--node-ip-address=127.0.0.1` is rewritten to the host's primary IP (services.resolve_ip_for_localhost),
  so both nodes report that IP (NodeManagerAddress) and carry the same `node:<ip>` resource: pin work
  with NodeAffinitySchedulingStrategy(node_id), not by IP. The GCS listens on all interfaces, so
  `address` (127.0.0.1:<port>) works. A driver on this host attaches to the head's raylet
  (get_node_to_connect_for_driver prefers the head when several raylets share an IP).
- Env: the raylet passes its env (that of `ray start`) to every worker it spawns, tasks and actors,
  with or without CPUs; workers start in the raylet's cwd (the node's home). Ray adds the driver's cwd
  to the workers' sys.path: see `RayCluster.driver_env`.
- Ports: the defaults that collide between two raylets on one host are the dashboard agent's HTTP port
  (52365), the Ray client server (10001, head only) and the worker port range 10002-19999 (shared with
  any other `ray start` here); the rest default to random. All node ports are given explicitly (all
  bound together once, so distinct) and workers bind OS-chosen ports (--min/max-worker-port=0).
- `ray start --head` writes `ray_current_cluster` into its temp dir, so another test session's plain
  `ray.init()` (which reads /tmp/ray/ray_current_cluster) never joins this cluster by accident.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

TESTS = Path(__file__).resolve().parent
AUDIT_HOOK_DIR = TESTS / "node_audit"
RAY_CLI = Path(sys.executable).with_name("ray")
LOCALHOST = "127.0.0.1"

#: env every node process runs with, besides HOME/POLYA_CACHE/PYTHONPATH and the audit variables
NODE_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def free_ports(count: int) -> list[int]:
    """`count` distinct loopback ports that are free now (all held open together while choosing)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind((LOCALHOST, 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as err:
        return f"<{path}: {err}>"


def kill_groups(procs: list[subprocess.Popen | None], grace_s: float = 10.0) -> None:
    """Stop process groups led by `procs` (each started with start_new_session): SIGTERM to the
    leaders (`ray start --block` then stops its own children: ~3 s, where SIGTERM to the whole group
    makes raylet and GCS linger ~10 s), SIGKILL to what is left of the groups after `grace_s`."""
    procs = [p for p in procs if p is not None]
    for proc in procs:
        try:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            else:  # the leader is gone: tell the rest of its group
                os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for proc in procs:
            proc.poll()  # reap the leader, or its group never looks empty
        if not any(_group_alive(p.pid) for p in procs):
            break
        time.sleep(0.2)
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# --------------------------------------------------------------------------------------------- S3


@dataclass
class S3Server:
    endpoint: str  # "http://127.0.0.1:<port>"
    proc: subprocess.Popen
    log: Path

    def env(self) -> dict[str, str]:
        """What a process needs to reach this server with plain `fsspec.filesystem("s3")`.

        Checked in fresh processes (env -i) against this server: botocore 1.43 under aiobotocore 3.10
        (s3fs 2026.9) and pyarrow.fs 26 both honour AWS_ENDPOINT_URL, so FSSPEC_S3_ENDPOINT_URL is not
        needed; without the key pair both fail (NoCredentialsError), so it is. The region is not
        strictly needed (both fall back to us-east-1) but pins bucket creation to moto's default.
        """
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def make_bucket(self, name: str) -> str:
        import s3fs

        # no client_kwargs region: s3fs would send it as LocationConstraint, which moto refuses for us-east-1
        fs = s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing", skip_instance_cache=True)
        fs.mkdir(name)
        return f"s3://{name}"

    def stop(self) -> None:
        kill_groups([self.proc], grace_s=5.0)


def s3fs_client(server: S3Server):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=server.endpoint, key="testing", secret="testing", skip_instance_cache=True)


def upload_model(server: S3Server, folder: Path, uri: str) -> None:
    client = s3fs_client(server)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_file(str(path), f"{uri[len('s3://'):]}/{path.relative_to(folder)}")


def start_s3(log_dir: Path, timeout_s: float = 60.0) -> S3Server:
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "moto-server.log"
    (port,) = free_ports(1)
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", LOCALHOST, "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    server = S3Server(endpoint=f"http://{LOCALHOST}:{port}", proc=proc, log=log)
    deadline = time.monotonic() + timeout_s
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an HTTP(S)_PROXY
    while True:
        try:
            with direct.open(server.endpoint + "/", timeout=2) as reply:
                if reply.status == 200:
                    return server
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"moto S3 server on port {port} did not answer (exit {proc.poll()}):\n{tail(log)}")
        time.sleep(0.2)


# -------------------------------------------------------------------------------------------- Ray


@dataclass
class Node:
    name: str  # "head" | "worker"
    home: Path  # private HOME of every process on this node
    cache: Path  # POLYA_CACHE = home/.cache/polya
    temp_dir: Path  # this node's Ray --temp-dir (short, under /tmp: see the module docstring)
    proc: subprocess.Popen  # `ray start --block`, leader of its own process group
    log: Path  # stdout/stderr of `ray start`
    env: dict[str, str] = field(repr=False)  # the env of every process of this node
    node_manager_port: int = 0
    node_id: str = ""  # Ray's node id (hex)

    def session_logs(self) -> Path:
        return self.temp_dir / "session_latest" / "logs"

    def log_tails(self) -> str:
        parts = [f"--- {self.name}: {self.log}\n{tail(self.log)}"]
        for name in ("raylet.out", "gcs_server.out", "raylet.err"):
            path = self.session_logs() / name
            if path.exists():
                parts.append(f"--- {self.name}: {path}\n{tail(path, 20)}")
        return "\n".join(parts)


@dataclass
class RayCluster:
    address: str  # "127.0.0.1:<gcs port>"
    head: Node
    worker: Node
    audit_log: Path  # one file every process appends violations to
    scratch: Path  # the short /tmp dir holding both nodes' temp dirs
    root: Path  # the folder given to start_two_nodes; a neutral cwd for drivers

    def driver_env(self) -> dict[str, str]:
        """The env of a driver on the head: the head's env (HOME, POLYA_CACHE, audit hook, extra env)
        plus RAY_ADDRESS.

        Run drivers from a cwd outside both homes (`root`, the repo): Ray puts the driver's cwd and
        script dir on every worker's sys.path, so a driver started in the head's home makes imports on
        the worker node list that folder, which the audit hook logs as a violation."""
        return dict(self.head.env, RAY_ADDRESS=self.address)

    def violations(self) -> list[str]:
        try:
            return self.audit_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        doomed = self._members()
        kill_groups([self.worker.proc, self.head.proc])
        survivors = [p for p in doomed + self._members() if p.is_running()]
        for proc in survivors:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(survivors, timeout=10)
        self._keep_logs()
        shutil.rmtree(self.scratch, ignore_errors=True)
        if alive:
            raise RuntimeError(f"processes of the Ray cluster at {self.address} survived SIGKILL: {alive}")

    def _members(self) -> list[psutil.Process]:
        """Processes of this cluster: descendants of both `ray start`s (Ray workers retitle themselves
        `ray::...`, so their cmdline no longer names the cluster) and any process whose cmdline names a
        node's temp dir or the GCS address."""
        members: dict[int, psutil.Process] = {}
        for node in (self.head, self.worker):
            if node.proc is None:
                continue
            try:
                root = psutil.Process(node.proc.pid)
                for proc in [root, *root.children(recursive=True)]:
                    members[proc.pid] = proc
            except psutil.NoSuchProcess:
                pass
        marks = (str(self.head.temp_dir) + os.sep, str(self.worker.temp_dir) + os.sep)
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if proc.pid != os.getpid() and any(_names_cluster(a, marks, self.address) for a in args):
                members.setdefault(proc.pid, proc)
        return list(members.values())

    def _keep_logs(self) -> None:
        for node in (self.head, self.worker):
            logs = node.session_logs()
            if logs.is_dir():
                shutil.copytree(logs, node.home.parent / "ray-logs", dirs_exist_ok=True,
                                ignore_dangling_symlinks=True)


def _names_cluster(arg: str, temp_marks: tuple[str, ...], address: str) -> bool:
    """Whether one cmdline argument names this cluster: a node's temp dir, or the GCS port under any
    host (Ray's own processes address the GCS by the host's primary IP, not 127.0.0.1)."""
    host, _, port = arg.split("=", 1)[-1].rpartition(":")
    if port == address.rpartition(":")[2] and re.fullmatch(r"[\w.\-]+|\[[0-9a-fA-F:]+\]", host):
        return True
    return any(mark in arg + os.sep for mark in temp_marks)


def _node_env(extra_env: dict[str, str], home: Path, name: str, forbidden: list[Path],
              audit_log: Path) -> dict[str, str]:
    env = {**os.environ, **extra_env}
    env.pop("RAY_ADDRESS", None)  # nodes get --address; workers' RAY_ADDRESS is Ray's business
    python_path = [str(AUDIT_HOOK_DIR)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update(NODE_ENV)
    env.update({
        "HOME": str(home),
        "POLYA_CACHE": str(home / ".cache" / "polya"),
        "PYTHONPATH": os.pathsep.join(python_path),
        "POLYA_AUDIT_NODE": name,
        "POLYA_AUDIT_FORBIDDEN": os.pathsep.join(str(p) for p in forbidden),
        "POLYA_AUDIT_LOG": str(audit_log),
    })
    return env


def _ray_start_args(name: str, temp_dir: Path, ports: list[int], gcs_port: int, cpus: int, gpus: int,
                    object_store_bytes: int) -> list[str]:
    """`ray start` flags for one node; `ports` are this node's distinct free ports."""
    node_manager, object_manager, agent_http, agent_grpc, metrics, runtime_env, client, dashboard = ports
    args = [str(RAY_CLI), "start", "--block", "--disable-usage-stats", f"--node-ip-address={LOCALHOST}",
            f"--node-name={name}", f"--temp-dir={temp_dir}", f"--num-cpus={cpus}", f"--num-gpus={gpus}",
            f"--object-store-memory={object_store_bytes}",
            f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
            "--min-worker-port=0", "--max-worker-port=0"]
    if name != "head":
        return args + [f"--address={LOCALHOST}:{gcs_port}"]
    # the dashboard head runs even with --include-dashboard=false (headless) and binds 8265 unless told
    args += ["--head", f"--port={gcs_port}", "--include-dashboard=false", f"--dashboard-port={dashboard}"]
    if importlib.util.find_spec("grpc") is not None:  # `ray start` serves Ray Client only with grpc
        args.append(f"--ray-client-server-port={client}")
    return args


def _start_node(node: Node, args: list[str]) -> Node:
    for path in (node.home, node.cache, node.temp_dir):
        path.mkdir(parents=True, exist_ok=True)
    with node.log.open("ab") as out:
        node.proc = subprocess.Popen(args, env=node.env, cwd=node.home, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
    return node


def _wait_for_port(port: int, nodes: list[Node], deadline: float) -> None:
    while True:
        with socket.socket() as sock:
            sock.settimeout(1)
            if sock.connect_ex((LOCALHOST, port)) == 0:
                return
        for node in nodes:
            if node.proc.poll() is not None:
                raise RuntimeError(f"`ray start` of {node.name} exited with {node.proc.returncode}:\n"
                                   f"{node.log_tails()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"GCS port {port} never opened:\n" + "\n".join(n.log_tails() for n in nodes))
        time.sleep(0.3)


# Runs as a driver on the head; prints {node manager port: node id} of the alive nodes it waited for.
_NODES_PROBE = """
import json, sys, time
import ray
want, deadline = {int(p) for p in sys.argv[1].split(",")}, time.monotonic() + float(sys.argv[2])
ray.init(logging_level="ERROR", log_to_driver=False)
while True:
    alive = {n["NodeManagerPort"]: n["NodeID"] for n in ray.nodes() if n["Alive"]}
    if want <= set(alive) or time.monotonic() > deadline:
        break
    time.sleep(0.5)
print("NODES", json.dumps(alive))
"""


def _find_node_ids(cluster: RayCluster, deadline: float) -> None:
    """Fill in both node ids once both nodes are alive; fail fast when a `ray start` exits."""
    nodes = [cluster.head, cluster.worker]
    want = ",".join(str(n.node_manager_port) for n in nodes)
    budget = max(deadline - time.monotonic(), 5.0)
    with tempfile.TemporaryFile("w+") as out:
        probe = subprocess.Popen([sys.executable, "-c", _NODES_PROBE, want, str(budget)], env=cluster.driver_env(),
                                 cwd=cluster.root, stdout=out, stderr=subprocess.STDOUT, text=True)
        hard_deadline, dead = time.monotonic() + budget + 60, []
        while probe.poll() is None and time.monotonic() < hard_deadline:
            dead = [n for n in nodes if n.proc.poll() is not None]
            if dead:
                break
            time.sleep(0.3)
        if probe.poll() is None:
            probe.kill()
            probe.wait()
        out.seek(0)
        text = out.read()
    found = [ln for ln in text.splitlines() if ln.startswith("NODES ")]
    alive = {int(k): v for k, v in json.loads(found[-1][6:]).items()} if found else {}
    for node in nodes:
        node.node_id = alive.get(node.node_manager_port, "")
    if dead or not all(n.node_id for n in nodes):
        why = ", ".join(f"`ray start` of {n.name} exited with {n.proc.returncode}" for n in dead) or "timeout"
        raise RuntimeError(f"both nodes of {cluster.address} were not alive ({why}; alive: {alive}):\n"
                           f"{text[-3000:]}\n" + "\n".join(n.log_tails() for n in nodes))


def _plan_node(root: Path, scratch: Path, name: str, extra_env: dict[str, str], other: str,
               audit_log: Path) -> Node:
    home = root / name / "home"
    forbidden = [root / other / "home", scratch / other]
    env = _node_env(extra_env, home, name, forbidden, audit_log)
    return Node(name=name, home=home, cache=Path(env["POLYA_CACHE"]), temp_dir=scratch / name,
                proc=None, log=root / name / "ray-start.log", env=env)  # type: ignore[arg-type]


def start_two_nodes(root: Path, extra_env: dict[str, str], worker_cpus: int = 2, *, worker_gpus: int = 0,
                    object_store_bytes: int = 256 * 1024**2, timeout_s: float = 180.0) -> RayCluster:
    """A head (no CPUs, no GPUs) and a worker (`worker_cpus`, `worker_gpus`) on this host, each node with
    its own HOME, POLYA_CACHE and Ray temp dir; returns once both are alive (node ids filled in).

    GPUs are never auto-detected: both raylets would claim the same devices."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="polya-rc-", dir="/tmp" if os.path.isdir("/tmp") else None))
    audit_log = root / "audit.log"
    audit_log.touch()
    head = _plan_node(root, scratch, "head", extra_env, "worker", audit_log)
    worker = _plan_node(root, scratch, "worker", extra_env, "head", audit_log)
    gcs_port, *ports = free_ports(17)
    head.node_manager_port, worker.node_manager_port = ports[0], ports[8]
    cluster = RayCluster(address=f"{LOCALHOST}:{gcs_port}", head=head, worker=worker, audit_log=audit_log,
                         scratch=scratch, root=root)
    deadline = time.monotonic() + timeout_s
    try:
        _start_node(head, _ray_start_args("head", head.temp_dir, ports[:8], gcs_port, 0, 0, object_store_bytes))
        _wait_for_port(gcs_port, [head], deadline)
        _start_node(worker, _ray_start_args("worker", worker.temp_dir, ports[8:], gcs_port, worker_cpus,
                                            worker_gpus, object_store_bytes))
        _find_node_ids(cluster, deadline)
    except BaseException:
        cluster.stop()
        raise
    return cluster


# ---------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server for the whole session."""
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture
def ray_two_nodes(tmp_path, s3_server):
    """A fresh two-node Ray cluster whose nodes reach `s3_server` through their env."""
    cluster = start_two_nodes(tmp_path / "cluster", s3_server.env())
    yield cluster
    cluster.stop()
