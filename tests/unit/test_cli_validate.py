"""`polya validate` as a user runs it: exit code and messages naming the field path."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from conftest import EXAMPLES, REPO


def polya(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "polya.cli", *args], capture_output=True, text=True, cwd=REPO)


def test_examples_validate():
    res = polya("validate", str(EXAMPLES / "polya-run.yaml"), str(EXAMPLES / "polya-run-local.yaml"))
    assert res.returncode == 0, res.stderr
    assert "llama3b-polya-n16" in res.stdout and "16 heuristics" in res.stdout
    assert "smollm2-arithmetic-n4" in res.stdout and "4 heuristics" in res.stdout


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (lambda s: s["grpo"].update(grupSize=4), "spec.grpo.grupSize: unknown field"),
        (lambda s: s["heuristics"].update(count=0), "spec.heuristics.count:"),
        (lambda s: s["heuristics"].update(count=65), "spec.heuristics.count:"),
        (lambda s: s["grpo"].update(groupSize=1), "spec.grpo.groupSize:"),
        (lambda s: s["evaluation"].update(k=[1, 64]), "spec.evaluation.k:"),
        (lambda s: s["grpo"].update(learningRate=-1e-6), "spec.grpo.learningRate:"),
        (lambda s: s["storage"].update(uri="ftp://x/y"), "spec.storage.uri: unsupported storage scheme"),
        (lambda s: s.pop("model"), "spec.model: required field is missing"),
        (lambda s: s["evaluation"].update(maxTokens=2048), "spec.evaluation.maxTokens: 2048 generated tokens leave 0"),
        (lambda s: s["grpo"]["rollout"].update(maxTokens=1900), "spec.grpo.rollout.maxTokens:"),
    ],
)
def test_validate_refuses(tmp_path, local_doc, mutate, expected):
    mutate(local_doc["spec"])
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(local_doc))
    res = polya("validate", str(path))
    assert res.returncode != 0
    assert expected in res.stderr, res.stderr


def test_validate_unreadable_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("spec: [unclosed\n")
    res = polya("validate", str(path))
    assert res.returncode == 1
    assert res.stderr.strip() == f"✗ {path}: not valid YAML at line 2, column 1: expected ',' or ']', but got " \
                                 "'<stream end>' (fix the syntax)"


def test_every_example_fits_its_token_budgets():
    """k8s/examples/*.yaml validate (the paper-scale one used to ask for 4096 evaluation tokens in a 4096 context)."""
    from polya.spec import MIN_PROMPT_TOKENS, PolyaRun

    everything = sorted(EXAMPLES.glob("*.yaml"))  # the PolyaSweep example too: validate expands its children
    res = polya("validate", *map(str, everything))
    assert res.returncode == 0, res.stderr
    assert "warning" not in res.stderr, res.stderr
    assert "PolyaSweep" in res.stdout and "= 6 PolyaRuns" in res.stdout, res.stdout
    examples = [p for p in everything if yaml.safe_load(p.read_text())["kind"] == "PolyaRun"]
    for example in examples:
        spec = PolyaRun.model_validate(yaml.safe_load(example.read_text())).spec
        for block in (spec.selfGeneration, spec.grpo.rollout, spec.evaluation):
            assert block.maxTokens + MIN_PROMPT_TOKENS <= spec.model.maxModelLen, example


def _smollm2_folder():
    """The built-in SmolLM2, prepared from the pip package it ships in (offline) where it is not yet."""
    from polya.models import builtin_model_dir, prepare_builtin

    folder = builtin_model_dir("smollm2-135m-instruct")
    if not (folder / "tokenizer.json").is_file():
        prepare_builtin("smollm2-135m-instruct")
    return folder


def test_validate_warns_where_the_longest_prompt_does_not_fit(tmp_path, local_doc):
    """A local question file whose longest prompt, rendered as the stages render it, leaves too little room
    beside maxTokens: `polya validate` warns (naming the field and the question) and still exits 0."""
    _smollm2_folder()
    data = tmp_path / "q.jsonl"
    rows = [{"problem": "1+1?", "answer": "2"}, {"problem": "How many? " + "word " * 1900, "answer": "1", "uid": "long"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    local_doc["spec"]["dataset"].update(source=str(data), idField="uid", limit=None)
    local_doc["spec"]["grpo"].pop("dataset")  # GRPO reads spec.dataset too
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(local_doc))
    res = polya("validate", str(path))
    assert res.returncode == 0, res.stderr
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 2, res.stderr  # self-generation and GRPO read the dataset; evaluation is builtin
    assert warnings[0].startswith(f"! {path}: warning: spec.selfGeneration.maxTokens: the longest prompt of the "
                                  f"dataset ({data}, question long, heuristic ")
    assert "spec.grpo.rollout.maxTokens" in warnings[1] and "> model.maxModelLen (2048)" in warnings[1]
    short = polya("validate", "--no-prompt-check", str(path))
    assert short.returncode == 0 and short.stderr == ""


def test_prompts_are_measured_as_the_engines_measure_them():
    """The torch-free tokenizer `polya validate` uses renders and counts exactly as transformers does."""
    from transformers import AutoTokenizer

    from polya.cli import FastTokenizer
    from polya.heuristics import CATALOGUE, render_prompt

    folder = _smollm2_folder()
    fast, slow = FastTokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    question = "Ava has 12 apples and gets 5 more.\n\nHow many apples does Ava have now? Use $x^2$ {braces}."
    for heuristic in (None, *CATALOGUE[:3]):
        for few_shot in (True, False):
            text = render_prompt(fast, question, heuristic, few_shot=few_shot)
            assert text == render_prompt(slow, question, heuristic, few_shot=few_shot)
            assert fast.count([text]) == [len(slow(text, add_special_tokens=False)["input_ids"])]


def test_run_skeleton_plans_stages(tmp_path):
    res = polya("run", "--dry-run", str(EXAMPLES / "polya-run-local.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    for stage in ("selfgen", "filter", "midtrain", "grpo", "evaluate"):
        assert stage in res.stderr
