"""PolyaSweep: expansion into child PolyaRuns (names, labels, overrides, seeds, shared storage), errors that name
the arm and the path, status aggregation, bootstrap intervals pinned to hand-computed cases, and the sweep
report's pure parts."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from polya.analysis.bootstrap import bootstrap
from polya.analysis.sweep_report import Evaluated, Row, blocks, counts_of, markdown, merge_shared, summarise
from polya.sweep import LABEL_SWEEP_ARM, aggregate, child_manifest, children, load_sweep
from polya.validation import validate_sweep_doc


def sweep_doc(local_doc: dict, **spec) -> dict:
    template = copy.deepcopy(local_doc["spec"])
    template["storage"] = {"uri": "s3://bucket/sweeps/n-vs-q"}
    body = {"template": template, "seeds": [0, 1],
            "arms": [{"name": "n4", "set": {"heuristics.count": 4, "dataset.limit": 8}},
                     {"name": "n1", "set": {"heuristics.count": 1, "dataset.limit": 32,
                                            "grpo.dataset": {"source": "builtin:arithmetic", "limit": 8}}}]}
    body.update(spec)
    return {"apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep", "metadata": {"name": "n-vs-q"}, "spec": body}


def errors(doc: dict) -> list[str]:
    return [str(e) for e in validate_sweep_doc(doc)[1]]


def test_children_are_the_template_with_each_arm_and_seed(local_doc):
    local_doc["spec"]["grpo"].pop("dataset")  # a template whose GRPO reads spec.dataset: the n1 arm sets its own
    sweep = load_sweep(sweep_doc(local_doc))
    kids = children(sweep)
    assert [k.metadata.name for k in kids] == ["n-vs-q-n4-s0", "n-vs-q-n4-s1", "n-vs-q-n1-s0", "n-vs-q-n1-s1"]
    assert [k.spec.seed for k in kids] == [0, 1, 0, 1]
    n4, n1 = kids[0].spec, kids[2].spec
    assert (n4.heuristics.count, n4.dataset.limit, n4.grpo.dataset) == (4, 8, None)
    assert (n1.heuristics.count, n1.dataset.limit, n1.grpo.dataset.limit) == (1, 32, 8)
    assert n4.rl_dataset().limit == n1.rl_dataset().limit == 8  # budget-matched arms, the same RL questions
    # untouched template fields carry over
    assert n1.grpo.steps == local_doc["spec"]["grpo"]["steps"] and n1.model.name == local_doc["spec"]["model"]["name"]
    # one run folder each, one shared content-addressed store
    assert kids[3].spec.storage.uri == "s3://bucket/sweeps/n-vs-q/runs/n-vs-q-n1-s1"
    assert {k.spec.storage.artifact_root() for k in kids} == {"s3://bucket/sweeps/n-vs-q"}
    assert kids[2].metadata.labels == {"polya.dev/sweep": "n-vs-q", LABEL_SWEEP_ARM: "n1", "polya.dev/sweep-seed": "0"}


def test_an_override_starts_from_the_template_as_written(local_doc):
    """The template's validation fills heuristics.count in; an arm that names heuristics instead must not
    collide with that filled-in default."""
    doc = sweep_doc(local_doc)
    del doc["spec"]["template"]["heuristics"]["count"]
    from polya.heuristics import CATALOGUE_IDS

    doc["spec"]["arms"] = [{"name": "named", "set": {"heuristics.names": list(CATALOGUE_IDS[:2])}}]
    kid = children(load_sweep(doc))[0]
    assert kid.spec.heuristics.count is None and len(kid.spec.heuristics.names) == 2


def test_child_manifest_is_owned_by_the_sweep(local_doc):
    sweep = load_sweep(sweep_doc(local_doc))
    owner = {"apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep", "metadata": {"name": "n-vs-q", "uid": "u-1"}}
    body = child_manifest(children(sweep)[0], owner)
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "polya.dev/v1alpha1", "kind": "PolyaSweep",
                                                    "name": "n-vs-q", "uid": "u-1", "controller": True,
                                                    "blockOwnerDeletion": True}]
    from polya.spec import PolyaRun

    again = PolyaRun.model_validate(body)  # the body is itself a valid PolyaRun
    assert again.spec == children(sweep)[0].spec


@pytest.mark.parametrize("mutate, fragment", [
    (lambda s: s["arms"][1]["set"].update({"heuristics.count": 65}), "spec.arms[1].set.heuristics.count: "),
    (lambda s: s["arms"][0]["set"].update({"grpo.grupSize": 4}), "did you mean 'groupSize'"),
    (lambda s: s["arms"][0]["set"].update({"seed": 3}), "set by the sweep"),
    (lambda s: s["arms"][0]["set"].update({"heuristics.count.x": 3}), "not an object"),
    (lambda s: s["arms"].append({"name": "n4"}), "arm names must be unique"),
    (lambda s: s.update(seeds=[1, 1]), "seeds must be unique"),
    (lambda s: s.update(seeds=[0, 1234567890123]) or s["arms"][0].update(name="a-very-long-arm-name-x"),
     "spec.arms[0].name: child PolyaRun 'n-vs-q-a-very-long-arm-name-x-s1234567890123' would be 44 characters"),
    (lambda s: s.update(arms=[]), "spec.arms: "),
    (lambda s: s["template"].pop("model"), "spec.template.model: required field is missing"),
])
def test_bad_sweeps_name_the_arm_and_the_path(local_doc, mutate, fragment):
    doc = sweep_doc(local_doc)
    mutate(doc["spec"])
    found = errors(doc)
    assert any(fragment in e for e in found), found


def test_status_follows_the_children():
    sweep = load_sweep(sweep_doc(_local()))
    names = [k.metadata.name for k in children(sweep)]
    assert aggregate(sweep, {}).phase == "Pending" and aggregate(sweep, {}).total == 4
    running = aggregate(sweep, {names[0]: "Succeeded", names[1]: "Running"})
    assert (running.phase, running.succeeded, running.message) == ("Running", 1, "1/4 children succeeded")
    done = aggregate(sweep, dict.fromkeys(names, "Succeeded"))
    assert (done.phase, done.succeeded) == ("Succeeded", 4)
    failed = aggregate(sweep, {**dict.fromkeys(names, "Succeeded"), names[2]: "Failed"})
    assert failed.phase == "Failed" and failed.failed == 1 and names[2] in failed.message
    assert [c.phase for c in failed.children] == ["Succeeded", "Succeeded", "Failed", "Succeeded"]


def _local() -> dict:
    import yaml

    from conftest import EXAMPLES

    return yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text())


# ------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_of_two_problems_is_the_hand_computed_distribution():
    # one seed, problems scoring 0 and 100: a resample's mean is 0, 50 or 100 with p = 1/4, 1/2, 1/4, so the
    # 95% percentile interval is [0, 100]; of 20 problems half right, the mean's spread is ~ 50 ± 1.96·50/√20
    block = np.array([[0.0, 100.0]])
    wide = bootstrap([block], resamples=4000, confidence=0.95)
    assert (wide.mean, wide.low, wide.high) == (50.0, 0.0, 100.0)
    twenty = bootstrap([np.array([[0.0, 100.0] * 10])], resamples=4000)
    assert twenty.mean == 50.0 and twenty.low == pytest.approx(50 - 1.96 * 50 / 20 ** 0.5, abs=4)
    assert twenty.high == pytest.approx(50 + 1.96 * 50 / 20 ** 0.5, abs=4)


def test_bootstrap_resamples_seeds_and_problems():
    # the same problems, seeds disagreeing: the interval comes from the seeds alone
    seeds_only = np.array([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]])
    iv = bootstrap([seeds_only], resamples=4000)
    assert (iv.mean, iv.low, iv.high) == (50.0, 0.0, 100.0)
    # no variation anywhere: a point
    flat = bootstrap([np.full((3, 5), 40.0)])
    assert (flat.mean, flat.low, flat.high) == (40.0, 40.0, 40.0)
    # two benchmarks: the figure is the mean of the benchmark means, whatever their sizes
    two = bootstrap([np.full((2, 1), 10.0), np.full((2, 9), 50.0)])
    assert two.mean == 30.0 and two.low == two.high == 30.0
    assert bootstrap([seeds_only], seed=3) == bootstrap([seeds_only], seed=3)
    with pytest.raises(ValueError, match="same seeds"):
        bootstrap([np.zeros((2, 3)), np.zeros((3, 3))])


# --------------------------------------------------------------------------------------- sweep report
def _ev(artifact: str, cells: dict, comp: float | None = None) -> Evaluated:
    return Evaluated(artifact, {"arith": cells}, comp)


def test_report_rows_pass_at_k_on_common_problems_and_shared_models():
    samples = [{"benchmark": "arith", "question_id": q, "status": s}
               for q, statuses in (("a", ["correct", "wrong"]), ("b", ["wrong", "wrong"])) for s in statuses]
    assert counts_of(samples) == {"arith": {"a": (2, 1), "b": (2, 0)}}
    # seed 1 also answered a problem seed 0 did not: only the common ones enter
    by_seed = {0: _ev("e0", {"a": (2, 1), "b": (2, 0)}, 0.2), 1: _ev("e1", {"a": (2, 2), "b": (2, 0), "c": (2, 2)}, 0.4)}
    (block,) = blocks(by_seed, 1)
    assert block.tolist() == [[50.0, 0.0], [100.0, 0.0]]
    base_a, base_b = Row("n4", "base", dict(by_seed)), Row("n1", "base", dict(by_seed))
    polya = Row("n1", "polya", {0: _ev("p0", {"a": (2, 2), "b": (2, 2)}), 1: _ev("p1", {"a": (2, 2), "b": (2, 2)})})
    rows = merge_shared([base_a, polya, base_b])
    assert [(r.arm, r.model, r.also) for r in rows] == [("n4", "base", ["n1"]), ("n1", "polya", [])]
    summary = summarise(rows, [1, 2, 4], resamples=500, confidence=0.95)
    assert summary[0]["pass_at_k"]["1"]["mean"] == 37.5  # (50 + 0 + 100 + 0) / 4
    assert summary[0]["pass_at_k"]["2"]["mean"] == 50.0  # pass@2 of (2, 1) is 1, of (2, 2) is 1, of (2, 0) is 0
    assert "4" not in summary[0]["pass_at_k"]  # k above the samples per problem: not estimable
    assert summary[1]["pass_at_k"]["1"] == {"mean": 100.0, "low": 100.0, "high": 100.0}
    assert summary[0]["composition"] == pytest.approx({"mean": 0.3, "min": 0.2, "max": 0.4})
    md = markdown("s", summary, [1, 2, 4], 0.95, "4/4 children have results.", [])
    assert "| n4/n1: base model | 2 | 37.5 [" in md and "| n1: Polya (SFT + GRPO) | 2 | 100.0 [100.0, 100.0]" in md


def test_report_ks_include_an_arms_own_evaluation_k(local_doc):
    from polya.analysis.sweep_report import report_ks

    doc = sweep_doc(local_doc)
    template_k = doc["spec"]["template"]["evaluation"]["k"]
    assert report_ks(load_sweep(doc)) == sorted(template_k)
    doc["spec"]["arms"][1]["set"]["evaluation.k"] = [1, 3, 5]  # this arm samples differently
    doc["spec"]["arms"][1]["set"]["evaluation.samples"] = 5
    assert report_ks(load_sweep(doc)) == sorted(set(template_k) | {1, 3, 5})


def test_differences_are_paired_on_seeds_and_problems_with_hand_computed_means():
    from polya.analysis.sweep_report import differences, paired_blocks

    vanilla = {0: _ev("v0", {"a": (4, 2), "b": (4, 0)}), 1: _ev("v1", {"a": (4, 1), "b": (4, 1)})}
    polya = {0: _ev("p0", {"a": (4, 4), "b": (4, 1)}), 1: _ev("p1", {"a": (4, 1), "b": (4, 3), "c": (4, 4)})}
    (block,) = paired_blocks(polya, vanilla, 1)  # problem c: polya only, left out
    assert block.tolist() == [[50.0, 25.0], [0.0, 50.0]]
    rows = [Row("n4", "base", {0: _ev("b0", {"a": (4, 0), "b": (4, 0)})}), Row("n4", "vanilla", vanilla),
            Row("n4", "polya", polya)]
    (diff,) = differences(rows, [1, 4, 8], "vanilla", resamples=400, confidence=0.95)  # base: no row
    assert diff["label"] == "n4: Polya (SFT + GRPO)" and diff["reference"] == "n4: vanilla GRPO"
    assert diff["delta"]["1"]["mean"] == pytest.approx(31.25) and diff["delta"]["1"]["seeds"] == 2
    assert 0.0 <= diff["delta"]["1"]["low"] < 31.25 < diff["delta"]["1"]["high"] <= 50.0
    # pass@4 of (4, c) is 1 when c > 0: polya 1,1 / 1,1 against vanilla 1,0 / 1,1 -> one problem of four gains 100
    assert diff["delta"]["4"]["mean"] == pytest.approx(25.0)
    assert "8" not in diff["delta"]  # more than the 4 samples per problem
    assert differences(rows[:1], [1], "vanilla", 100, 0.95) == []  # no reference row: no table


def test_training_and_data_tables_spread_over_seeds():
    from polya.analysis.sweep_report import stage_table

    def ev(first: float, last: float) -> Evaluated:
        e = _ev("x", {"a": (1, 1)})
        e.stages = {"grpo": {"reward_first5": first, "reward_last5": last}, "evaluate": {"pass@1": 1.0}}
        return e

    rows = [Row("n4", "base", {0: _ev("b", {"a": (1, 0)})}), Row("n4", "vanilla", {0: ev(0.2, 0.6), 1: ev(0.3, 0.9)})]
    (entry,) = stage_table(rows, "grpo", ("reward_first5", "reward_last5"))
    assert entry["figures"]["reward_first5"] == pytest.approx({"mean": 0.25, "min": 0.2, "max": 0.3, "n": 2})
    assert entry["figures"]["reward_last5"]["mean"] == pytest.approx(0.75)
    md = markdown("s", [], [1], 0.95, "", [], {"training": [entry]})
    assert "| n4: vanilla GRPO | 2 | 0.25 [0.2, 0.3] | 0.75 [0.6, 0.9] | +0.500 |" in md


def test_reward_curves_per_row_over_seeds(tmp_path):
    from polya.analysis.plots import plot_reward_curves
    from polya.analysis.sweep_report import reward_curves

    a, b = _ev("a", {"q": (1, 1)}), _ev("b", {"q": (1, 1)})
    a.rewards, b.rewards = [0.1, 0.5, 0.9], [0.2, 0.4]
    rows = [Row("n4", "base", {0: _ev("x", {"q": (1, 0)})}), Row("n4", "vanilla", {1: b, 0: a})]
    assert reward_curves(rows) == {"n4: vanilla GRPO": [[0.1, 0.5, 0.9], [0.2, 0.4]]}  # seed order; base: none
    out = plot_reward_curves(reward_curves(rows), tmp_path / "r.png")
    assert out.stat().st_size > 1000


def test_a_paired_difference_is_narrower_than_the_rows_it_compares():
    """Problems of very different difficulty, one model 20 points above the other on each: the rows' own
    intervals are wide and overlap, the paired difference's is tight around 20 (an unpaired bootstrap of the
    difference would be about as wide as the rows')."""
    from polya.analysis.sweep_report import differences

    rates = [0, 10, 30, 50, 70, 80]
    ref = {s: _ev(f"v{s}", {f"q{i}": (10, r // 10) for i, r in enumerate(rates)}) for s in (0, 1)}
    up = {s: _ev(f"p{s}", {f"q{i}": (10, r // 10 + 2) for i, r in enumerate(rates)}) for s in (0, 1)}
    rows = [Row("a", "vanilla", ref), Row("a", "polya", up)]
    (d,) = differences(rows, [1], "vanilla", resamples=1000, confidence=0.95)
    assert d["delta"]["1"] == {"mean": pytest.approx(20.0), "low": pytest.approx(20.0), "high": pytest.approx(20.0),
                               "seeds": 2}
    row_iv = summarise(rows, [1], resamples=1000, confidence=0.95)[1]["pass_at_k"]["1"]
    assert row_iv["high"] - row_iv["low"] > 30  # the row's own interval: the problems' spread


def test_each_arm_is_compared_with_its_own_vanilla_row():
    """Two arms that change vanilla's inputs (grpo.learningRate) have a vanilla row each: each arm's Polya row is
    paired with its own; an arm without vanilla (baselines: []) with the sweep's only one."""
    from polya.analysis.sweep_report import differences

    def ev(c):
        return {0: _ev(f"x{c}", {"q": (4, c)})}

    rows = [Row("lr-a", "vanilla", ev(1)), Row("lr-a", "polya", ev(2)), Row("lr-b", "vanilla", ev(3)),
            Row("lr-b", "polya", ev(3))]
    got = {d["label"]: (d["reference"], d["delta"]["1"]["mean"]) for d in differences(rows, [1], "vanilla", 100, 0.95)}
    assert got == {"lr-a: Polya (SFT + GRPO)": ("lr-a: vanilla GRPO", 25.0),
                   "lr-b: Polya (SFT + GRPO)": ("lr-b: vanilla GRPO", 0.0)}
    shared = [Row("n4", "vanilla", ev(1)), Row("n1", "polya", ev(4))]
    (d,) = differences(shared, [1], "vanilla", 100, 0.95)
    assert (d["reference"], d["delta"]["1"]["mean"]) == ("n4: vanilla GRPO", 75.0)


def test_step_rewards_keep_skipped_steps_aligned_and_nan_figures_are_left_out():
    from polya.analysis.sweep_report import stage_table, step_rewards

    got = step_rewards([{"step": 1, "reward_mean": 0.5}, {"step": 2, "skipped": 1.0}, {"step": 3, "reward_mean": 0.7}])
    assert got[0] == 0.5 and np.isnan(got[1]) and got[2] == 0.7
    a, b = _ev("a", {"q": (1, 1)}), _ev("b", {"q": (1, 1)})
    a.stages, b.stages = {"grpo": {"reward_first5": float("nan")}}, {"grpo": {"reward_first5": 0.4}}
    (entry,) = stage_table([Row("n4", "vanilla", {0: a, 1: b})], "grpo", ("reward_first5",))
    assert entry["figures"]["reward_first5"] == {"mean": 0.4, "min": 0.4, "max": 0.4, "n": 1}


def test_a_stage_two_arms_share_is_one_entry_of_its_table():
    from polya.analysis.sweep_report import stage_table

    def ev(filt: str, kept: int) -> Evaluated:
        e = _ev("x", {"q": (1, 1)})
        e.stages, e.stage_uris = {"filter": {"kept": kept}}, {"filter": filt}
        return e

    rows = [Row("lr-a", "polya", {0: ev("f0", 3), 1: ev("f1", 5)}),
            Row("lr-b", "polya", {0: ev("f0", 3), 1: ev("f1", 5)}),
            Row("n1", "polya", {0: ev("g0", 7), 1: ev("g1", 9)})]
    got = {e["label"]: e["figures"]["kept"]["mean"] for e in stage_table(rows, "filter", ("kept",))}
    assert got == {"lr-a/lr-b: Polya (SFT + GRPO)": 4.0, "n1: Polya (SFT + GRPO)": 8.0}


def test_the_same_model_is_compared_across_arms():
    from polya.analysis.sweep_report import arm_differences

    def ev(c):
        return {0: _ev(f"x{c}", {"q": (4, c)}), 1: _ev(f"y{c}", {"q": (4, c)})}

    shared_base = Row("n4", "base", ev(0), also=["n1"])
    rows = [shared_base, Row("n4", "polya", ev(1)), Row("n1", "polya", ev(3)), Row("n1", "polya-sft", ev(2))]
    (d,) = arm_differences(rows, [1, 2], 100, 0.95)  # base: one shared row; polya-sft: in one arm only
    assert (d["label"], d["reference"]) == ("n1: Polya (SFT + GRPO)", "n4: Polya (SFT + GRPO)")
    assert d["delta"]["1"]["mean"] == pytest.approx(50.0) and d["delta"]["1"]["seeds"] == 2
    assert d["delta"]["2"]["mean"] == pytest.approx(50.0)  # pass@2: 1 - C(1,2)/C(4,2) = 1 vs 1 - C(3,2)/C(4,2) = 0.5


def test_this_machine_runs_a_sweep_seed_by_seed(local_doc):
    """Every arm of the first seed, then of the next (the order of spec.seeds): a sweep cut short holds whole
    seeds to compare; the status keeps arm-major order."""
    from polya.sweep_run import run_order

    sweep = load_sweep(sweep_doc(local_doc, seeds=[5, 2]))
    assert [c.metadata.name for c in run_order(sweep)] == ["n-vs-q-n4-s5", "n-vs-q-n1-s5", "n-vs-q-n4-s2",
                                                           "n-vs-q-n1-s2"]
    assert [c.metadata.name for c in children(sweep)][:2] == ["n-vs-q-n4-s5", "n-vs-q-n4-s2"]
