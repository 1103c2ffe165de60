"""The Helm chart with the real Helm engine (helm-python-sdk), offline schema checks of every manifest,
the Grafana dashboard's contract with the exported metric names, and an install onto the real API server."""
from __future__ import annotations

import json
import re

import helm_python
import kubernetes_validate
import pytest
import yaml

from conftest import REPO

CHART = REPO / "helm" / "polya"
BUILTIN_KINDS = {"Deployment", "Service", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Namespace"}


def render(values=None, namespace="polya-system") -> list[dict]:
    with helm_python.Chart.load(CHART) as chart:
        out = chart.render(values, name="polya", namespace=namespace)
    docs = []
    for path, text in out.items():
        if path.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def test_lint_is_clean():
    result = helm_python.lint(str(CHART))
    assert result["errors"] == []
    severe = [m for m in result["messages"] if m["severity"] >= 3]
    assert severe == [], severe


@pytest.mark.parametrize("values", [None, {"serviceMonitor": {"enabled": True}, "podMonitor": {"enabled": True},
                                           "operator": {"watchNamespaces": ["a", "b"],
                                                        "envFrom": [{"secretRef": {"name": "s3"}}],
                                                        "env": [{"name": "AWS_REGION", "value": "eu-west-1"}]},
                                           "stages": {"image": "x/polya:1", "nodeSelector": {"pool": "gpu"},
                                                      "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}}])
def test_rendered_builtin_objects_validate(values):
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ClusterRole", "ServiceAccount", "Service", "ConfigMap"} <= kinds
    for doc in docs:
        if doc["kind"] in BUILTIN_KINDS:
            kubernetes_validate.validate(doc, "1.30", strict=True)
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True and c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["resources"]["requests"] and c["livenessProbe"] and c["readinessProbe"]
    if values:
        assert "ServiceMonitor" in kinds
        pm = next(d for d in docs if d["kind"] == "PodMonitor")["spec"]
        assert pm["podMetricsEndpoints"][0]["port"] == "polya-metrics" and pm["namespaceSelector"] == {"any": True}
        assert pm["selector"]["matchExpressions"] == [{"key": "polya.dev/run", "operator": "Exists"}]
        assert ["--namespace=a", "--namespace=b"] == [a for a in c["args"] if a.startswith("--namespace")]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert json.loads(env["POLYA_DEFAULT_NODE_SELECTOR"]) == {"pool": "gpu"}
        assert env["AWS_REGION"] == "eu-west-1" and c["envFrom"] == [{"secretRef": {"name": "s3"}}]
    else:
        assert "ServiceMonitor" not in kinds and "PodMonitor" not in kinds and "--all-namespaces" in c["args"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["POLYA_STAGE_METRICS_PORT"] == "9464" and env["POLYA_STAGE_METRICS_LINGER_S"] == "30"


def test_values_schema_refuses_bad_values():
    with pytest.raises(helm_python.HelmError):
        render({"image": {"repository": "x", "tag": "1", "pullPolicy": "Sometimes"}})
    with pytest.raises(helm_python.HelmError):
        render({"operatr": {}})


def test_rbac_is_least_privilege():
    role = next(d for d in render() if d["kind"] == "ClusterRole")
    verbs = {(g, r): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert verbs[("polya.dev", "polyaruns/status")] == {"get", "patch"}
    assert verbs[("polya.dev", "polyaruns")] == {"get", "list", "watch", "create", "patch"}  # a sweep's children
    assert verbs[("polya.dev", "polyasweeps")] == {"get", "list", "watch", "patch"}
    assert verbs[("polya.dev", "polyasweeps/status")] == {"get", "patch"}
    assert verbs[("polya.dev", "polyasweeps/finalizers")] == {"update"}
    assert verbs[("", "configmaps")] == {"get", "create"}
    assert all("*" not in v for v in verbs.values()) and ("", "secrets") not in verbs
    assert yaml.safe_load((REPO / "k8s/operator/rbac.yaml").read_text().split("---")[1])["rules"] == role["rules"]


def test_chart_crds_are_the_generated_ones():
    from polya.crd import HELM_CRD_PATHS, rendered_files

    files = rendered_files()
    for cel, path in HELM_CRD_PATHS.items():
        doc = yaml.safe_load((REPO / path).read_text())
        assert (REPO / path).read_text() == files[path], f"{path} drifted: run `polya crd --write`"
        assert doc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert ("x-kubernetes-validations" in json.dumps(doc)) is cel
    k8s = yaml.safe_load((REPO / "k8s/crds/polya.dev_polyaruns.yaml").read_text())
    with_cel = yaml.safe_load((REPO / HELM_CRD_PATHS[True]).read_text())
    del with_cel["metadata"]["annotations"]
    assert with_cel == k8s  # the same schema as `kubectl apply -k k8s` installs


def test_sweep_crds_are_the_generated_ones():
    """The PolyaSweep CRD: one CEL-free copy for the chart (every server version), the same for k8s/."""
    from polya.crd import HELM_SWEEP_CRD_PATH, SWEEP_CRD_PATH, rendered_files

    files = rendered_files()
    for path in (SWEEP_CRD_PATH, HELM_SWEEP_CRD_PATH):
        assert (REPO / path).read_text() == files[path], f"{path} drifted: run `polya crd --write`"
    chart = yaml.safe_load((REPO / HELM_SWEEP_CRD_PATH).read_text())
    assert chart["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "x-kubernetes-validations" not in json.dumps(chart)
    assert chart["spec"]["names"]["shortNames"] == ["psweep"]
    del chart["metadata"]["annotations"]
    assert chart == yaml.safe_load((REPO / SWEEP_CRD_PATH).read_text())
    kust = yaml.safe_load((REPO / "k8s/kustomization.yaml").read_text())
    assert str(SWEEP_CRD_PATH.relative_to("k8s")) in kust["resources"]
    kinds = [(d["kind"], d["metadata"]["name"]) for d in render() if d["kind"] == "CustomResourceDefinition"]
    assert ("CustomResourceDefinition", "polyasweeps.polya.dev") in kinds


def test_k8s_manifests_validate():
    kust = yaml.safe_load((REPO / "k8s/kustomization.yaml").read_text())
    for res in kust["resources"]:
        for doc in yaml.safe_load_all((REPO / "k8s" / res).read_text()):
            if doc and doc["kind"] in BUILTIN_KINDS | {"CustomResourceDefinition"}:
                kubernetes_validate.validate(doc, "1.30", strict=True)


def _exported_names() -> set[str]:
    from polya import metrics as data_plane
    from polya_operator import metrics as control_plane

    return set(data_plane.ALL_NAMES) | set(control_plane.ALL_NAMES)


def test_dashboard_is_grafana_json_querying_only_exported_metrics():
    dash = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    exported = _exported_names()
    queried = set()
    for panel in dash["panels"]:
        assert {"type", "title", "gridPos", "targets"} <= set(panel)
        for target in panel["targets"]:
            for name in re.findall(r"\b(polya_[a-z_]+)\b", target["expr"]):
                queried.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert queried, "the dashboard queries nothing"
    assert queried <= exported, f"unknown metrics: {sorted(queried - exported)}"
    for needed in ("polya_grpo_reward_mean", "polya_grpo_kl", "polya_generation_tokens_per_second",
                   "polya_filter_keep_ratio", "polya_composition_ratio", "polya_operator_runs"):
        assert needed in queried
    # rendered into the sidecar's ConfigMap intact
    cm = next(d for d in render() if d["kind"] == "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1" and json.loads(cm["data"]["polya.json"]) == dash
