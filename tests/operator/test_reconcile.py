"""The operator's pure decision function, stage by stage, with hand-built observations."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone

import pytest

from polya_operator.children import LABEL_RUN, child_name, rayjob
from polya_operator.reconcile import Observed, backoff, reconcile
from polya.recipe import STAGES, Stage
from polya.spec import PolyaRunSpec, StageStatus

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def run(local_doc):
    doc = copy.deepcopy(local_doc)
    doc["metadata"].update(namespace="ns", uid="uid-1", generation=3)
    doc["metadata"]["name"] = "r"
    return doc


def step(run, observed, now=T0):
    d = reconcile(run, observed, now)
    run["status"] = d.status
    return d


def reported(job, **status):
    """A copy of ``job`` with the status KubeRay would report."""
    job = copy.deepcopy(job)
    job["status"] = status
    return job


def finish(job, ok=True, message=None):
    return reported(job, jobStatus="SUCCEEDED" if ok else "FAILED",
                    jobDeploymentStatus="Complete" if ok else "Failed", message=message)


def test_first_pass_creates_configmap_and_first_rayjob(run):
    d = step(run, Observed())
    kinds = [o["kind"] for o in d.create]
    assert kinds == ["ConfigMap", "RayJob"]
    job = d.create[1]
    assert job["metadata"]["name"] == "r-base-evaluate-1"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["labels"][LABEL_RUN] == "r"
    assert job["spec"]["entrypoint"] == "polya stage evaluate --spec /etc/polya/run.yaml --arm base"
    assert d.status["phase"] == "Running" and d.status["currentStage"] == "base/evaluate"
    assert d.status["observedGeneration"] == 3
    assert [s["name"] for s in d.status["stages"]] == ["base/evaluate", "polya/selfgen", "polya/filter",
                                                      "polya/midtrain", "polya-sft/evaluate", "polya/grpo",
                                                      "polya/evaluate"]
    assert d.events[0].reason == "StageStarted"


def test_success_advances_and_idempotent_when_nothing_changed(run):
    first = step(run, Observed()).create[1]
    # the job is still running: nothing new is created
    again = step(run, Observed(rayjobs={first["metadata"]["name"]: first}, configmap=True))
    assert again.create == [] and again.events == []
    done = finish(first)
    d = step(run, Observed(rayjobs={done["metadata"]["name"]: done}, configmap=True,
                           results={"base/evaluate": {"artifactUri": "/runs/r/evaluate/abc", "figures": {"pass@1": 12.5}}}))
    assert [o["metadata"]["name"] for o in d.create] == ["r-polya-selfgen-1"]
    st = {s["name"]: s for s in d.status["stages"]}
    assert st["base/evaluate"]["phase"] == "Succeeded" and st["base/evaluate"]["figures"] == {"pass@1": 12.5}
    assert st["base/evaluate"]["artifactUri"] == "/runs/r/evaluate/abc"
    assert st["polya/selfgen"]["phase"] == "Running" and d.status["currentStage"] == "polya/selfgen"


def test_finished_names_the_stages_that_succeeded_in_this_pass(run):
    first = step(run, Observed()).create[1]
    running = step(run, Observed(rayjobs={first["metadata"]["name"]: first}, configmap=True))
    assert running.finished == []
    d = step(run, Observed(rayjobs={first["metadata"]["name"]: finish(first)}, configmap=True))
    assert [type(s) for s in d.finished] == [StageStatus]
    assert [s.name for s in d.finished] == ["base/evaluate"]
    assert d.finished[0].phase == "Succeeded" and d.finished[0].startTime and d.finished[0].finishTime
    # the next pass sees the same (finished) job: nothing finishes again
    again = step(run, Observed(rayjobs={first["metadata"]["name"]: finish(first)}, configmap=True))
    assert again.finished == []


def _nulls(value, path="status"):
    if isinstance(value, dict):
        return [n for k, v in value.items() for n in _nulls(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [n for i, v in enumerate(value) for n in _nulls(v, f"{path}[{i}]")]
    return [path] if value is None else []


def test_status_dump_is_idempotent(run):
    """What the API server holds after a patch (a JSON round trip of the decision's status) reconciles to
    the same status dict when nothing changed, so the operator patches once and then stops."""

    def stable(observed, now):
        d = reconcile(run, observed, now)
        assert _nulls(d.status) == []  # a merge patch would delete a null: never send one
        run["status"] = json.loads(json.dumps(d.status))
        assert run["status"] == d.status
        for later in (now, now + timedelta(seconds=1)):
            assert reconcile(run, observed, later).status == d.status
        return d

    first = stable(Observed(), T0).create[1]
    name = first["metadata"]["name"]
    stable(Observed(rayjobs={name: first}, configmap=True), T0)  # running
    results = {"base/evaluate": {"artifactUri": "/runs/r/evaluate/abc", "figures": {"pass@1": 12.5}}}
    stable(Observed(rayjobs={name: finish(first)}, configmap=True, results=results), T0 + timedelta(seconds=5))
    stages = {s["name"]: s for s in run["status"]["stages"]}
    assert stages["base/evaluate"]["figures"] == {"pass@1": 12.5} and stages["polya/selfgen"]["figures"] == {}
    jobs = {name: finish(first)}
    for _ in range(10):  # to the end: every stage succeeds, currentStage is cleared
        d = stable(Observed(rayjobs=jobs, configmap=True), T0 + timedelta(seconds=9))
        jobs.update({o["metadata"]["name"]: finish(o) for o in d.create if o["kind"] == "RayJob"})
        if d.status["phase"] == "Succeeded":
            break
    assert d.status["phase"] == "Succeeded" and "currentStage" not in d.status


def test_failure_retries_with_backoff_then_fails_the_run(run):
    run["spec"]["maxStageRetries"] = 1
    job = step(run, Observed()).create[1]
    failed = finish(job, ok=False, message="OOMKilled")
    d = step(run, Observed(rayjobs={job["metadata"]["name"]: failed}, configmap=True))
    st = d.status["stages"][0]
    assert st["phase"] == "Pending" and st["attempts"] == 1 and "OOMKilled" in st["message"]
    assert d.create == [] and d.events[0].reason == "StageRetrying"
    # before the backoff elapses: nothing is created, a requeue is asked for
    early = step(run, Observed(rayjobs={job["metadata"]["name"]: failed}, configmap=True), T0 + timedelta(seconds=3))
    assert early.create == [] and 0 < early.requeue_after <= backoff(1)
    later = step(run, Observed(rayjobs={job["metadata"]["name"]: failed}, configmap=True),
                 T0 + timedelta(seconds=backoff(1) + 1))
    assert [o["metadata"]["name"] for o in later.create] == ["r-base-evaluate-2"]
    job2 = later.create[0]
    final = step(run, Observed(rayjobs={job["metadata"]["name"]: failed, job2["metadata"]["name"]: finish(job2, False, "still OOM")},
                               configmap=True), T0 + timedelta(seconds=60))
    assert final.status["phase"] == "Failed"
    assert "base/evaluate failed after 2 attempt(s): still OOM" in final.status["message"]
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in final.status["conditions"])
    assert final.events[-1].reason == "RunFailed"
    # terminal: nothing more happens
    assert step(run, Observed(configmap=True), T0 + timedelta(hours=1)).create == []


def test_a_rayjob_kuberay_refuses_fails_its_stage_at_once_with_kuberays_message(run):
    """KubeRay sets jobDeploymentStatus ValidationFailed (jobStatus stays empty) for a RayJob it refuses:
    the stage fails with its message, without retries (the same RayJob would be refused again)."""
    run["spec"]["maxStageRetries"] = 3
    job = step(run, Observed()).create[1]
    refused = reported(job, jobDeploymentStatus="ValidationFailed", reason="ValidationFailed",
                       message="RayJob name should be no more than 47 characters")
    d = step(run, Observed(rayjobs={job["metadata"]["name"]: refused}, configmap=True))
    st = d.status["stages"][0]
    assert st["phase"] == "Failed" and st["attempts"] == 1 and d.create == []
    assert d.status["phase"] == "Failed"
    assert d.status["message"] == ("stage base/evaluate failed after 1 attempt(s): KubeRay refused the RayJob "
                                   "(ValidationFailed): RayJob name should be no more than 47 characters")


def test_backoff_grows_and_caps():
    assert [backoff(a) for a in (1, 2, 3)] == [10, 20, 40]
    assert backoff(20) == 300


def test_suspend_starts_nothing_and_resume_continues(run):
    run["spec"]["suspend"] = True
    d = step(run, Observed(configmap=True))
    assert d.create == [] and d.status["phase"] == "Suspended"
    run["spec"]["suspend"] = False
    d = step(run, Observed(configmap=True))
    assert [o["metadata"]["name"] for o in d.create] == ["r-base-evaluate-1"] and d.status["phase"] == "Running"
    assert any(c["type"] == "Suspended" and c["status"] == "False" for c in d.status["conditions"])


def test_missing_job_is_recreated_under_the_same_name(run):
    first = step(run, Observed()).create[1]
    d = step(run, Observed(configmap=True))  # the RayJob vanished (or the cache lags)
    assert [o["metadata"]["name"] for o in d.create] == [first["metadata"]["name"]]
    assert d.status["stages"][0]["attempts"] == 1


def run_to_success(run, passes: int = 12):
    """Reconcile until the run succeeds, every RayJob finishing as soon as it is created; the last decision
    and the RayJobs by name."""
    jobs = {}
    for _ in range(passes):
        d = step(run, Observed(rayjobs=jobs, configmap=True))
        for obj in d.create:
            if obj["kind"] == "RayJob":
                jobs[obj["metadata"]["name"]] = finish(obj)
        if d.status["phase"] == "Succeeded":
            break
    return d, jobs


def test_all_succeeded_and_serve_creates_rayservice(run):
    run["spec"]["evaluation"]["serve"] = True
    d, jobs = run_to_success(run, passes=10)
    assert d.status["phase"] == "Succeeded" and d.status.get("currentStage") is None
    assert [o["kind"] for o in d.create] == ["RayService"]
    assert d.create[0]["metadata"]["name"] == "r-serve"
    assert len(jobs) == 7


def test_invalid_spec_fails_with_field_errors(run):
    run["spec"]["grpo"]["groupSize"] = 1
    d = step(run, Observed())
    assert d.create == [] and d.status["phase"] == "Failed"
    assert "spec.grpo.groupSize" in d.status["message"]
    assert d.events[0].reason == "InvalidSpec"


def test_gpu_requests_and_placement(run):
    run["spec"]["grpo"].update(workers=4, gpusPerWorker=1, rollout={"replicas": 2, "gpusPerReplica": 1})
    run["spec"]["cluster"] = {"nodeSelector": {"pool": "h100"}, "gpuResource": "nvidia.com/gpu",
                              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}
    spec = PolyaRunSpec.model_validate(run["spec"])
    assert STAGES[Stage.GRPO].accelerators(spec) == (6, 1)
    job = rayjob(run, spec, "polya", "grpo", 1, __import__("polya_operator.children", fromlist=["Defaults"]).Defaults())
    group = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert group["replicas"] == 6
    pod = group["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"pool": "h100"} and pod["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert pod["volumes"][0]["configMap"]["name"] == "r-spec"
    assert child_name("r", "polya", "grpo", 2) == "r-polya-grpo-2"


def test_operator_never_imports_torch():
    import subprocess
    import sys

    code = "import sys, polya_operator.main; bad = [m for m in ('torch', 'vllm', 'ray', 'transformers') if m in sys.modules]; print(bad)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_cluster_env_secrets_and_volumes_reach_every_pod_of_every_rayjob(run):
    """The paper-scale example's credentials (by Secret), caches (PVC, Memory emptyDir), pull secret and head
    size reach the head and worker pods of every stage's RayJob, next to the operator's manifest mount;
    the pods pass the Kubernetes schema (kubernetes-validate, 1.30)."""
    import kubernetes_validate
    import yaml as _yaml

    from conftest import EXAMPLES
    from polya_operator.children import Defaults

    run["spec"]["cluster"] = _yaml.safe_load((EXAMPLES / "polya-run.yaml").read_text())["spec"]["cluster"]
    spec = PolyaRunSpec.model_validate(run["spec"])
    d, jobs = run_to_success(run)  # every stage of the plan, each finishing at once
    assert d.status["phase"] == "Succeeded" and len(jobs) == 7
    for job in jobs.values():
        cluster = job["spec"]["rayClusterSpec"]
        heads = [cluster["headGroupSpec"]["template"]]
        for template in heads + [g["template"] for g in cluster["workerGroupSpecs"]]:
            pod = template["spec"]
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod},
                                         "1.30", strict=True)
            c = pod["containers"][0]
            assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}} in c["env"]
            assert c["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
            assert [m["mountPath"] for m in c["volumeMounts"]] == ["/etc/polya", "/models", "/dev/shm"]
            assert {v["name"] for v in pod["volumes"]} == {"polya-spec", "model-cache", "dshm"}
            assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        head = heads[0]["spec"]["containers"][0]["resources"]["limits"]
        assert (head["cpu"], head["memory"]) == ("4", "16Gi")
    assert spec.cluster.env[0].valueFrom.secretKeyRef.name == "hf-token"


@pytest.mark.parametrize("cluster,field", [
    ({"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, "volumeMounts"),
    ({"volumes": [{"name": "a", "emptyDir": {}, "secret": {"secretName": "s"}}]}, "exactly one"),
    ({"volumes": [{"name": "polya-spec", "emptyDir": {}}]}, "polya-spec"),
    ({"volumes": [{"name": "v", "emptyDir": {}}], "volumeMounts": [{"name": "v", "mountPath": "/etc/polya"}]}, "/etc/polya"),
    ({"volumes": [{"name": "v", "emptyDir": {}}], "volumeMounts": [{"name": "v", "mountPath": "/etc/polya/x"}]},
     "/etc/polya"),
    ({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "w", "emptyDir": {}}],
      "volumeMounts": [{"name": "v", "mountPath": "/d"}, {"name": "w", "mountPath": "/d/"}]}, "twice"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}, "not both"),
    ({"envFrom": [{"prefix": "X_"}]}, "exactly one"),
])
def test_bad_cluster_settings_fail_the_run_with_the_field(run, cluster, field):
    run["spec"]["cluster"] = cluster
    d = step(run, Observed())
    assert d.create == [] and d.status["phase"] == "Failed"
    assert "spec.cluster" in d.status["message"] and field in d.status["message"]


# ------------------------------------------------------------------- issue 13: names, deadlines, Kueue, serve, edits
def test_child_names_of_a_40_character_run_fit_kuberays_47(run):
    """KubeRay refuses RayJob names over 47 characters; every child of a 40-character run fits, names stay
    distinct per step and attempt, and are the same on every pass (a restarted operator adopts them)."""
    from polya.recipe import plan
    from polya_operator.children import MAX_RAYJOB_NAME

    long = "a" * 36 + "-b1c"
    assert len(long) == 40
    spec = PolyaRunSpec.model_validate(run["spec"])
    names = {child_name(long, s.arm, s.stage, a) for s in plan(spec) for a in (1, 2, 10)}
    assert len(names) == 3 * len(plan(spec))
    assert max(len(n) for n in names) == MAX_RAYJOB_NAME
    assert all(n.startswith(long + "-") and n[-1].isalnum() for n in names)
    assert child_name(long, "polya-sft", "evaluate", 1) == child_name(long, "polya-sft", "evaluate", 1)
    assert child_name("r", "polya-sft", "evaluate", 1) == "r-polya-sft-evaluate-1"  # short names stay readable
    run["metadata"]["name"] = long
    job = step(run, Observed()).create[1]
    assert job["metadata"]["name"] == run["status"]["stages"][0]["rayJobName"] and len(job["metadata"]["name"]) <= 47


def test_the_crd_and_validate_refuse_a_41_character_name():
    from polya.crd import build_crd
    from polya.spec import MAX_RUN_NAME, ObjectMeta

    meta = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["metadata"]
    assert meta["properties"]["name"]["maxLength"] == MAX_RUN_NAME == 40
    ObjectMeta(name="a" * 40)
    with pytest.raises(ValueError, match="at most 40 characters"):
        ObjectMeta(name="a" * 41)


def test_deadline_and_kueue_queue_reach_the_rayjob(run):
    run["spec"]["cluster"] = {"activeDeadlineSeconds": 3600, "queueName": "team-a"}
    job = step(run, Observed()).create[1]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a" and job["spec"]["suspend"] is True
    # KubeRay reports the suspended job; the stage says it is queued until Kueue admits it
    queued = copy.deepcopy(job)
    queued["status"] = {"jobDeploymentStatus": "Suspended"}
    d = step(run, Observed(rayjobs={job["metadata"]["name"]: queued}, configmap=True))
    assert d.status["stages"][0]["message"] == "queued: the RayJob waits for Kueue to admit it (queue team-a)"
    admitted = copy.deepcopy(job)
    admitted["spec"]["suspend"] = False
    admitted["status"] = {"jobDeploymentStatus": "Running", "jobStatus": "RUNNING"}
    d = step(run, Observed(rayjobs={job["metadata"]["name"]: admitted}, configmap=True))
    assert "message" not in d.status["stages"][0] and d.status["stages"][0]["phase"] == "Running"
    plain = step({**copy.deepcopy(run), "status": None, "spec": {**run["spec"], "cluster": {}}}, Observed()).create[1]
    assert "activeDeadlineSeconds" not in plain["spec"] and "suspend" not in plain["spec"]
    assert "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_a_stage_past_its_deadline_is_retried_with_kuberays_reason(run):
    run["spec"]["cluster"] = {"activeDeadlineSeconds": 60}
    run["spec"]["maxStageRetries"] = 1
    job = step(run, Observed()).create[1]
    late = reported(job, jobDeploymentStatus="Failed", reason="DeadlineExceeded",
                    message="The RayJob has passed the activeDeadlineSeconds.")
    d = step(run, Observed(rayjobs={job["metadata"]["name"]: late}, configmap=True))
    st = d.status["stages"][0]
    assert st["phase"] == "Pending" and st["message"].startswith(
        "attempt 1 failed: DeadlineExceeded: The RayJob has passed the activeDeadlineSeconds.")


def test_rayservice_serves_the_final_model_sized_for_both_apps_and_goes_when_serve_is_off(run):
    run["spec"]["evaluation"]["serve"] = True
    run["spec"]["evaluation"]["gpusPerReplica"] = 1
    run["spec"]["filtering"]["rewardModel"]["gpusPerReplica"] = 1
    run["spec"]["filtering"]["rewardModel"]["replicas"] = 2
    jobs: dict = {}
    results = {"polya/grpo": {"artifactUri": "s3://b/runs/grpo/k1"},
               "polya/midtrain": {"artifactUri": "s3://b/runs/midtrain/k0"}}
    for _ in range(12):
        d = step(run, Observed(rayjobs=jobs, configmap=True, results=results))
        for obj in d.create:
            if obj["kind"] == "RayJob":
                jobs[obj["metadata"]["name"]] = finish(obj)
        if d.status["phase"] == "Succeeded":
            break
    svc = d.create[0]
    assert svc["kind"] == "RayService"
    import yaml as _yaml

    apps = {a["name"]: a for a in _yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]}
    assert apps["rollout"]["args"]["model"] == "s3://b/runs/grpo/k1/model"  # GRPO's model, not the base model
    workers = svc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 1 + 2  # one evaluation replica + two reward-model replicas, one GPU each
    # turning serving off deletes the RayService of a succeeded run
    run["spec"]["evaluation"]["serve"] = False
    d = step(run, Observed(rayjobs=jobs, configmap=True, rayservice=True, results=results))
    assert d.delete == [("RayService", "r-serve")] and d.status["phase"] == "Succeeded"


def test_spec_edits_after_start_are_refused_with_a_condition_and_mutable_fields_apply(run):
    run["spec"]["maxStageRetries"] = 0  # started without retries
    applied = copy.deepcopy(run["spec"])
    first = step(run, Observed()).create[1]
    jobs = {first["metadata"]["name"]: first}
    run["metadata"]["generation"] = 4
    run["spec"]["grpo"]["steps"] = applied["grpo"]["steps"] + 5  # what GRPO computes: refused
    run["spec"]["baselines"] = ["vanilla"]  # would add stages: refused too
    run["spec"]["maxStageRetries"] = 7  # steers the operator only: applies
    d = step(run, Observed(rayjobs=jobs, configmap=True, applied_spec=applied))
    cond = {c["type"]: c for c in d.status["conditions"]}["SpecApplied"]
    assert cond["status"] == "False" and cond["reason"] == "EditRefused"
    assert "spec.grpo.steps" in cond["message"] and "spec.baselines" in cond["message"]
    assert "new name" in cond["message"]
    assert [e.reason for e in d.events] == ["EditRefused"]
    assert d.status["observedGeneration"] == 4
    assert len(d.status["stages"]) == 7  # the plan of the applied spec: no vanilla arm
    again = step(run, Observed(rayjobs=jobs, configmap=True, applied_spec=applied))
    assert again.events == []  # said once
    # the mutable field took effect: a failure is retried up to the edited maxStageRetries
    failed = {first["metadata"]["name"]: finish(first, ok=False, message="boom")}
    d = step(run, Observed(rayjobs=failed, configmap=True, applied_spec=applied))
    assert d.status["stages"][0]["phase"] == "Pending"
    # reverting the edit clears the condition
    run["spec"]["grpo"]["steps"], run["spec"]["baselines"] = applied["grpo"]["steps"], applied.get("baselines", [])
    d = step(run, Observed(rayjobs=failed, configmap=True, applied_spec=applied))
    cond = {c["type"]: c for c in d.status["conditions"]}["SpecApplied"]
    assert cond["status"] == "True" and cond["reason"] == "SpecMatches"


def test_the_stage_driver_exports_metrics_on_a_port_the_head_pod_declares(run):
    job = step(run, Observed()).create[1]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]
    worker = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]
    c = head["spec"]["containers"][0]
    assert c["ports"] == [{"name": "polya-metrics", "containerPort": 9464, "protocol": "TCP"}]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["POLYA_METRICS_PORT"] == "9464" and env["POLYA_METRICS_LINGER_S"] == "30"
    assert "ports" not in worker["spec"]["containers"][0]
    assert head["metadata"]["labels"] == worker["metadata"]["labels"] == {LABEL_RUN: "r"}


def test_stages_complete_in_storage_are_reused_without_a_rayjob(run):
    """A new run with the same storage and inputs: each step whose manifest exists succeeds without a RayJob
    (the key is the one `polya stage` computes from the input artifacts' keys)."""
    from polya.recipe import plan

    seen: list[tuple[str, str]] = []

    def everything(stage, key):
        seen.append((stage, key))
        return {"artifactUri": f"s3://b/runs/{stage}/{key}", "figures": {"n": 1.0}}

    d = step(run, Observed(cached=everything))
    assert [o["kind"] for o in d.create] == ["ConfigMap"] and d.status["phase"] == "Succeeded"
    assert all(s["phase"] == "Succeeded" and s["message"] == "reused from storage (no RayJob)"
               and s.get("attempts", 0) == 0 for s in d.status["stages"])
    assert len(seen) == len(plan(PolyaRunSpec.model_validate(run["spec"])))
    # keys chain: the filter's key depends on selfgen's artifact, so a different selfgen artifact changes it
    keys = dict(seen)
    assert len(set(keys.values())) == len(keys)

    run2 = copy.deepcopy(run)
    run2["status"] = None
    only_first_two = lambda stage, key: ({"artifactUri": f"s3://b/runs/{stage}/{key}"}  # noqa: E731
                                         if stage in ("evaluate", "selfgen") and (stage, key) in seen[:2] else None)
    d = step(run2, Observed(cached=only_first_two))
    assert [o["metadata"]["name"] for o in d.create if o["kind"] == "RayJob"] == ["r-polya-filter-1"]
    assert [s["phase"] for s in d.status["stages"][:3]] == ["Succeeded", "Succeeded", "Running"]


def test_a_step_another_run_is_computing_waits_without_a_rayjob_then_is_reused(run):
    """A sweep sibling holds the lease on this step's artifact: no RayJob (its pods would only wait), the
    stage says whom it waits for and the run looks again; once the manifest is there the step is reused; a
    lease nobody holds any more (stale: `leased` answers None) lets the step start its own RayJob."""
    from polya_operator.reconcile import LEASE_RECHECK_S

    holder = {"name": "sweep-lr-a-s0"}
    first_key = []

    def leased(stage, key):
        first_key.append((stage, key))
        return holder["name"]

    d = step(run, Observed(configmap=True, leased=leased))
    assert [o["kind"] for o in d.create] == [] and d.requeue_after == LEASE_RECHECK_S
    first = d.status["stages"][0]
    assert first["phase"] == "Pending" and "sweep-lr-a-s0" in first["message"] and first.get("attempts", 0) == 0
    assert d.status["phase"] == "Running" and [e.reason for e in d.events].count("WaitingForArtifact") == 1

    run["status"] = d.status  # the holder committed: the next pass reuses its artifact
    done = lambda stage, key: {"artifactUri": f"s3://b/{stage}/{key}"} if (stage, key) == first_key[0] else None  # noqa: E731
    d = step(run, Observed(configmap=True, leased=leased, cached=done))
    assert d.status["stages"][0]["phase"] == "Succeeded" and d.status["stages"][0]["message"].startswith("reused")
    assert not [o for o in d.create if o["kind"] == "RayJob"]  # the next step: the holder computes it too

    holder["name"] = None  # its lease went stale (the holder died): this run computes the step itself
    run["status"] = d.status
    d = step(run, Observed(configmap=True, leased=leased, cached=done))
    assert [o["metadata"]["name"] for o in d.create if o["kind"] == "RayJob"] == ["r-polya-selfgen-1"]
