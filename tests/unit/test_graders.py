"""Benchmark kinds and their graders (`polya.benchmarks`, `polya.graders`) on the real benchmark files of
../shared/data (HumanEval, MuSR, MATH-500; skipped where they are absent), real math-verify and the real
sandbox (skipped, with its reason, where bubblewrap cannot run). HumanEval runs its first 8 problems;
`POLYA_HUMANEVAL_ALL=1 pytest tests/unit/test_graders.py -k all_164` runs all 164 (3 passes of 164 programs:
22 s on 2 quiet cores, 69 s on busy ones)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import yaml

from conftest import REPO

from polya.analysis.passk import mean_pass_at_k
from polya.benchmarks import LETTERS, detect_kind, load_benchmark, row_kind
from polya.data import load_questions
from polya.graders import (GRADERS, ChoiceGrader, GraderSettings, Graders, build_program, code_prompt,
                           extract_code, extract_letter)
from polya.heuristics import render_prompt
from polya.spec import BenchmarkSpec, PolyaRun
from polya.stages.evaluate import AVERAGE, averages, headline, markdown_table
from polya.validation import UserError
from polya.verify import Verifier

MUSR = ("musr_small_murder_mystery.json", "musr_small_object_placements.json", "musr_small_team_allocation.json")


def bench(path, **kw) -> BenchmarkSpec:
    return BenchmarkSpec(name="b", source=str(path), **kw)


def sandbox_or_skip() -> None:
    from polya import sandbox

    reason = sandbox.unavailable()
    if reason:
        pytest.skip(f"sandbox unavailable: {reason}")


def pass_at_1(verdicts) -> float:
    return mean_pass_at_k([(1, int(v.correct)) for v in verdicts], [1])[1]


# ------------------------------------------------------------------------------------------------- kinds
def test_every_kind_of_the_spec_has_a_grader():
    from typing import get_args

    assert set(GRADERS) == set(get_args(BenchmarkSpec.model_fields["kind"].annotation)) - {"auto"}
    assert BenchmarkSpec(name="b", source="builtin:arithmetic").kind == "auto"


def test_auto_detects_the_kind_of_each_real_file(shared_data):
    expected = {"humaneval.jsonl": ("code", 164), "HumanEval.jsonl.gz": ("code", 164),
                "musr_small_murder_mystery.json": ("choice", 5), "musr_small_object_placements.json": ("choice", 20),
                "musr_small_team_allocation.json": ("choice", 5), "math500.jsonl": ("math", 500),
                "aime24.jsonl": ("math", 30)}
    for name, (kind, n) in expected.items():
        got_kind, questions, report = load_benchmark(bench(shared_data / name))
        assert (got_kind, len(questions), report.rejected) == (kind, n, 0), name
    assert detect_kind(BenchmarkSpec(name="a", source="builtin:arithmetic")) == "math"
    he = load_benchmark(bench(shared_data / "humaneval.jsonl"))[1][0]
    assert (he.id, he.meta["entry_point"]) == ("HumanEval/0", "has_close_elements") and "def check(" in he.meta["test"]
    mm = load_benchmark(bench(shared_data / MUSR[0]))[1][0]
    assert mm.answer == "A" and mm.meta["choices"] == ["Mackenzie", "Ana"]
    assert mm.question.rstrip().endswith("Who is the most likely murderer?\n\nA. Mackenzie\nB. Ana")


def test_an_explicit_kind_wins_and_math_loading_is_unchanged(shared_data):
    with pytest.raises(UserError, match="no usable question"):  # HumanEval read as math: no 'problem' field
        load_benchmark(bench(shared_data / "humaneval.jsonl", kind="math"))
    with pytest.raises(UserError, match="no usable choice question"):
        load_benchmark(bench(shared_data / "math500.jsonl", kind="choice"))
    auto, _ = load_questions(bench(shared_data / "math500.jsonl", idField="unique_id"))
    plain, _ = load_questions(bench(shared_data / "math500.jsonl", idField="unique_id", kind="math"))
    assert [(q.id, q.question, q.answer) for q in auto] == [(q.id, q.question, q.answer) for q in plain]
    # load_questions (what `polya validate` and check_inputs call) reads a code benchmark by its kind
    code, report = load_questions(bench(shared_data / "humaneval.jsonl", limit=3))
    assert [q.meta["kind"] for q in code] == ["code"] * 3 and report.summary().endswith("3/3 rows kept")


def test_row_kind_and_bad_rows_are_reported(tmp_path):
    assert row_kind({"prompt": "def f():\n", "test": "def check(c): pass", "entry_point": "f"}) == "code"
    assert row_kind({"narrative": "x", "question": "q", "choices": "['a', 'b']", "answer_index": 1}) == "choice"
    assert row_kind({"problem": "1+1", "answer": "2"}) == "math"
    rows = [{"narrative": "Story.", "question": "Who?", "choices": "['Ann', 'Bob']", "answer_index": 1},
            {"narrative": "Story.", "question": "Who?", "choices": ["Ann", "Bob"], "answer_choice": "Ann"},
            {"narrative": "Story.", "question": "Who?", "choices": ["Ann", "Bob"], "answer": 5},
            {"narrative": "Story.", "question": "", "choices": ["Ann", "Bob"], "answer": 0},
            {"narrative": "Story.", "question": "Who?", "choices": ["Ann"], "answer": 0}, "not an object"]
    path = tmp_path / "hub_musr.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    kind, qs, report = load_benchmark(bench(path))
    assert kind == "choice" and [q.answer for q in qs] == ["B", "A"]
    assert (report.rows, report.kept, report.rejected) == (7, 2, 5)
    assert set(report.bad) == {"no usable answer (an index into 'choices', a letter or a choice's text)",
                               "missing or empty 'question'", "'choices' is not a list of 2-26 texts",
                               "row is not an object",
                               "invalid JSON (Expecting property name enclosed in double quotes)"}
    code = tmp_path / "code.jsonl"
    good = {"task_id": "t/0", "prompt": "def f(x):\n", "test": "def check(c):\n    assert c(1) == 2\n",
            "entry_point": "f"}
    code.write_text("\n".join(json.dumps(r) for r in [good, {**good, "task_id": "t/1", "test": "assert True"},
                                                      {**good, "task_id": "t/2", "entry_point": "no name"}, good]))
    kind, qs, report = load_benchmark(bench(code, kind="code"))
    assert [q.id for q in qs] == ["t/0"] and sorted(report.bad) == [
        "'entry_point' is not a Python name", "'test' defines no check(candidate)", "duplicate id"]


def test_a_spec_with_code_and_choice_benchmarks_validates(tmp_path, local_doc, shared_data):
    local_doc["spec"]["evaluation"]["benchmarks"] += [
        {"name": "humaneval", "source": str(shared_data / "humaneval.jsonl")},
        {"name": "musr-op", "source": str(shared_data / MUSR[1]), "kind": "choice"}]
    run = PolyaRun.model_validate(local_doc)
    assert [b.kind for b in run.spec.evaluation.benchmarks][-2:] == ["auto", "choice"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(local_doc))
    res = subprocess.run([sys.executable, "-m", "polya.cli", "validate", str(path)], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "humaneval" not in res.stdout + res.stderr and "musr" not in res.stdout + res.stderr  # no load warning
    bad = yaml.safe_load(yaml.safe_dump(local_doc))
    bad["spec"]["evaluation"]["benchmarks"][-1]["kind"] = "multiple-choice"
    path.write_text(yaml.safe_dump(bad))
    res = subprocess.run([sys.executable, "-m", "polya.cli", "validate", str(path)], capture_output=True, text=True,
                         cwd=REPO)
    last = len(bad["spec"]["evaluation"]["benchmarks"]) - 1
    assert res.returncode != 0 and f"spec.evaluation.benchmarks[{last}].kind: Input should be" in res.stderr


# ------------------------------------------------------------------------------------------------ choice
LETTER_CASES = [
    ("Answer: B", ["Mackenzie", "Ana"], "B"),
    ("The answer is (A).", ["Mackenzie", "Ana"], "A"),
    ("So $\\boxed{B}$", ["Mackenzie", "Ana"], "B"),
    ("$\\boxed{\\text{A}}$", ["Mackenzie", "Ana"], "A"),
    ("**Answer:** B", ["Mackenzie", "Ana"], "B"),
    ("The final answer is: **C**", ["x", "y", "z"], "C"),
    ("answer is option B", ["x", "y", "z"], "B"),
    ("A is the most likely, not B. Answer: A", ["x", "y", "z"], "A"),
    ("Answer: B\n\nNote: A could also be argued.", ["Mackenzie", "Ana"], "B"),
    ("Boxes: \\boxed{A} first... then Answer: B", ["Mackenzie", "Ana"], "A"),  # boxed wins over "Answer:"
    ("Answer: Ana", ["Mackenzie", "Ana"], "B"),  # the option's text, not the "A" of "Ana"
    ("Ana", ["Mackenzie", "Ana"], "B"),
    ("Therefore the most likely murderer is Mackenzie.", ["Mackenzie", "Ana"], "A"),
    ("So Danny looks in the kitchen drawer.", ["kitchen", "kitchen drawer", "nightstand"], "B"),
    ("Mackenzie or Ana? It was Ana, not Mackenzie.", ["Mackenzie", "Ana"], None),  # last line names both
    ("I choose (C) because it fits.", ["x", "y", "z"], "C"),
    ("Between A and B, B.", ["x", "y"], "B"),
    ("It was B", ["x", "y"], "B"),
    ("A lot of clues point to a person.", ["x", "y"], None),  # the article is no answer
    ("A murderer is hard to find. I think B.", ["x", "y"], "B"),
    ("Answer: D", ["x", "y", "z"], None),  # not one of the options
    ("Answer: C", ["x", "y"], None),
    ("nothing to see", ["x", "y"], None),
    ("", ["x", "y"], None),
    # letters met on the way to a conclusion are no answer (a reply cut off mid-reasoning)
    ("(B) is mentioned in the story.\nBut the killer must have had the weapon", ["x", "y"], None),
    ("Option C seems unlikely.\nLet us weigh the motives of each", ["x", "y", "z"], None),
]


@pytest.mark.parametrize("text, choices, expected", LETTER_CASES)
def test_letter_extraction(text, choices, expected):
    assert extract_letter(text, choices) == expected


def _musr_questions(shared_data):
    qs = []
    for name in MUSR:
        qs += load_benchmark(bench(shared_data / name))[1]
    return qs


def test_musr_gold_scores_100_and_a_constant_letter_scores_chance(shared_data):
    qs = _musr_questions(shared_data)
    gold_dist = Counter(q.answer for q in qs)
    raw = [q["answer"] for name in MUSR for row in json.loads((shared_data / name).read_text())
           for q in row["questions"]]
    assert len(qs) == len(raw) == 30 and gold_dist == Counter(LETTERS[i] for i in raw)
    chance = 100 * sum(1 / len(q.meta["choices"]) for q in qs) / len(qs)  # a uniform guess: 32.1%
    grader = ChoiceGrader(GraderSettings())
    assert pass_at_1(grader.grade(qs, [f"Reasoning...\nAnswer: {q.answer}" for q in qs])) == 100.0
    assert pass_at_1(grader.grade(qs, [f"It must be \\boxed{{{q.answer}}}." for q in qs])) == 100.0
    texts = [f"Answer: {q.meta['choices'][LETTERS.index(q.answer)]}" for q in qs]  # the gold option's text
    assert pass_at_1(grader.grade(qs, texts)) == 100.0
    constant = pass_at_1(grader.grade(qs, ["Answer: B"] * len(qs)))
    assert constant == pytest.approx(100 * gold_dist["B"] / len(qs))
    assert abs(constant - chance) <= 5, (constant, chance)
    wrong = [f"Answer: {LETTERS[(LETTERS.index(q.answer) + 1) % len(q.meta['choices'])]}" for q in qs]
    assert pass_at_1(grader.grade(qs, wrong)) == 0.0
    verdicts = grader.grade(qs[:2], ["no idea", "Answer: Z"])
    assert [(v.status, v.predicted) for v in verdicts] == [("unparsable", None), ("unparsable", None)]


def test_choice_and_code_prompts(shared_data):
    class Bare:
        chat_template = None

    q = load_benchmark(bench(shared_data / MUSR[1]))[1][0]
    text = Graders()["choice"].prompt(Bare(), q)
    assert text.startswith("User: ") and text.endswith("Assistant:")
    assert "A. piano\nB. producer's desk\nC. recording booth" in text and "'Answer: X'" in text and "(A, B, C)" in text
    he = load_benchmark(bench(shared_data / "humaneval.jsonl", limit=1))[1][0]
    rendered = code_prompt(Bare(), he)
    assert "Complete the following Python function" in rendered and f"```python\n{he.meta['prompt']}```" in rendered


def test_prompts_go_through_the_chat_template(tiny_model, shared_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    q = load_benchmark(bench(shared_data / MUSR[0]))[1][0]
    text = Graders()["choice"].prompt(tok, q)
    assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n") and "B. Ana" in text


# -------------------------------------------------------------------------------------------------- math
def test_math_grading_is_todays_verifier(shared_data, tiny_model):
    from transformers import AutoTokenizer

    qs = load_benchmark(bench(shared_data / "math500.jsonl", limit=6))[1]
    completions = [f"So the answer is \\boxed{{{q.answer}}}." for q in qs[:3]] + \
                  ["The answer is \\boxed{12345}.", "no final answer here", f"#### {qs[5].answer}"]
    settings = GraderSettings(workers=1, few_shot=False)
    with Graders(settings) as graders, Verifier(workers=1) as verifier:
        got = graders["math"].grade(qs, completions)
        assert got == verifier.verify_many([q.answer for q in qs], completions)
        tok = AutoTokenizer.from_pretrained(tiny_model)
        assert graders["math"].prompt(tok, qs[0]) == render_prompt(tok, qs[0].question, None, few_shot=False)
    assert [v.status for v in got][:5] == ["correct"] * 3 + ["incorrect", "unparsable"]


def test_math_average_and_headline():
    results = {"math500": {1: 40.0}, "humaneval": {1: 10.0}, "aime24": {1: 20.0}, "musr": {1: 70.0}}
    kinds = {"math500": "math", "humaneval": "code", "aime24": "math", "musr": "choice"}
    avg = averages(results, kinds, [1])
    assert avg == {AVERAGE: {1: 30.0}, "average_all": {1: 35.0}}
    assert headline({**results, AVERAGE: avg[AVERAGE]}, kinds) == {1: 30.0}
    one_math = {"humaneval": {1: 10.0}, "math500": {1: 40.0}}
    assert AVERAGE not in averages(one_math, kinds, [1]) and headline(one_math, kinds) == {1: 40.0}
    table = markdown_table({**results, AVERAGE: avg[AVERAGE]}, [1], kinds)
    assert "| humaneval | code | 10.00 |" in table and "| average | math | 30.00 |" in table


# -------------------------------------------------------------------------------------------------- code
def test_code_extraction_without_running():
    prompt = "from typing import List\n\n\ndef add(a: int, b: int) -> int:\n    \"\"\"Sum.\"\"\"\n"
    from polya.data import Question

    q = Question("t", prompt, "", meta={"prompt": prompt, "entry_point": "add",
                                        "test": "def check(c):\n    assert c(1, 2) == 3\n"})
    fenced = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```\nExample:\n```python\nprint(add(1, 2))\n```"
    assert extract_code(fenced, "add") == "def add(a, b):\n    return a + b\n"
    unfenced = "Here it is.\ndef add(a, b):\n    return a + b\n\nprint(add(1, 2))\n"
    assert extract_code(unfenced, "add") == "def add(a, b):\n    return a + b\n\n"
    truncated = "```python\ndef add(a, b):\n    return a + b"  # the reply ran out of tokens inside the fence
    assert extract_code(truncated, "add") == "def add(a, b):\n    return a + b"
    program, _ = build_program(q, "return a + b")  # a flush-left body is indented under the signature
    assert program.startswith(prompt + "    return a + b") and program.endswith("check(add)\n")
    program, code = build_program(q, fenced)
    assert program.startswith(prompt.rstrip()) and "def add(a, b):\n    return a + b" in program
    assert build_program(q, "   \n") == (None, "   \n")


def _humaneval(shared_data, n: int | None):
    return load_benchmark(bench(shared_data / "humaneval.jsonl", limit=n))[1]


def _check_humaneval(shared_data, n: int | None) -> None:
    sandbox_or_skip()
    qs = _humaneval(shared_data, n)
    with Graders(GraderSettings(workers=2)) as graders:
        grader = graders["code"]
        canonical = grader.grade(qs, [q.answer for q in qs])
        assert pass_at_1(canonical) == 100.0, [(q.id, v.status) for q, v in zip(qs, canonical) if not v.correct]
        empty = grader.grade(qs, ["    pass\n"] * len(qs))
        assert pass_at_1(empty) == 0.0, [q.id for q, v in zip(qs, empty) if v.correct]
        # as a chat model answers: prose, the whole function repeated in a fence, prose after
        chatty = [f"Here is the function:\n\n```python\n{q.meta['prompt']}{q.answer}```\n\nIt works because..."
                  for q in qs]
        assert pass_at_1(grader.grade(qs, chatty)) == 100.0
        assert {v.status for v in grader.grade(qs[:2], ["", "```python\nwhile True:\n    pass\n```"])} <= \
               {"unparsable", "incorrect", "timeout"}


def test_humaneval_canonical_passes_and_empty_fails(shared_data):
    _check_humaneval(shared_data, 8)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("POLYA_HUMANEVAL_ALL"), reason="all 164 problems (22-70 s on 2 cores): "
                    "set POLYA_HUMANEVAL_ALL=1")
def test_humaneval_all_164(shared_data):
    _check_humaneval(shared_data, None)


def test_code_grading_reports_timeouts_and_crashes(shared_data):
    sandbox_or_skip()
    from polya import sandbox

    q = _humaneval(shared_data, 1)[0]
    grader = Graders(GraderSettings(workers=2))["code"]
    grader.pool = sandbox.SandboxPool(workers=2, limits=sandbox.Limits(wall_s=2.0, cpu_s=2.0))
    body = "    while True:\n        pass\n"
    verdicts = grader.grade([q] * 4, [body, "    raise SystemExit(3)\n", "    return not_defined\n",
                                      "    import sys\n    sys.exit(0)\n"])  # exit 0 before the tests ran: no pass
    assert [v.status for v in verdicts] == ["timeout", "incorrect", "incorrect", "incorrect"]


def test_a_run_with_a_code_benchmark_is_refused_up_front_where_the_sandbox_cannot_work(tmp_path, monkeypatch):
    """Preflight (before any stage) names the benchmark and the fix when bubblewrap is missing; with the sandbox
    working, the same run passes, and a run without code benchmarks never asks."""
    from polya import preflight, sandbox
    from polya.spec import PolyaRun

    rows = tmp_path / "he.jsonl"
    rows.write_text(json.dumps({"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
                                "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}) + "\n")
    doc = yaml.safe_load((REPO / "k8s/examples/polya-run-local.yaml").read_text())
    doc["spec"]["evaluation"]["benchmarks"].append({"name": "he", "source": str(rows)})
    run = PolyaRun.model_validate(doc)
    sandbox._probe.cache_clear()
    assert sandbox.unavailable() is None and preflight._sandbox(run) == []
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the PATH
    sandbox._probe.cache_clear()
    try:
        found = preflight._sandbox(run)
        assert len(found) == 1 and found[0].startswith("evaluation.benchmarks[1] (he: a code benchmark) runs its")
        assert "bubblewrap (bwrap) is not installed" in found[0] and "ensure-bwrap.sh" in found[0]
        assert preflight._sandbox(run, only="grpo") == []  # `polya run --only grpo` evaluates nothing
        doc["spec"]["evaluation"]["benchmarks"].pop()
        assert preflight._sandbox(PolyaRun.model_validate(doc)) == []
        doc["spec"]["grpo"]["dataset"] = {"source": str(rows)}  # code questions rewarded by their tests
        found = preflight._sandbox(PolyaRun.model_validate(doc), only="grpo")
        assert len(found) == 1 and found[0].startswith("grpo.reward (code rewards) runs its programs")
        doc["spec"]["grpo"]["reward"] = "math"  # said so: no sandbox needed
        assert preflight._sandbox(PolyaRun.model_validate(doc)) == []
    finally:
        monkeypatch.undo()
        sandbox._probe.cache_clear()


def test_grpo_rewards_code_questions_by_running_their_tests(tmp_path):
    """grpo.reward auto on HumanEval-format rows: the code grader (sandbox) rewards a right body 1 and a wrong one
    0, with no format bonus; on builtin arithmetic it is math-verify plus the boxed bonus."""
    from polya.graders import GraderSettings
    from polya.spec import DatasetSpec
    from polya.stages.grpo import reward_inputs, rewards

    rows = tmp_path / "he.jsonl"
    rows.write_text(json.dumps({"task_id": "t/0", "prompt": "def add(a, b):\n", "canonical_solution": "",
                                "test": "def check(c):\n    assert c(2, 3) == 5\n", "entry_point": "add"}) + "\n")
    settings = GraderSettings(workers=2)
    questions, grader = reward_inputs(DatasetSpec(source=str(rows)), "auto", settings)
    try:
        assert grader.kind == "code" and [q.id for q in questions] == ["t/0"]
        texts = ["    return a + b  # \\boxed{5}\n", "    return a - b\n", "    pass\n"]
        assert rewards(grader, questions * 3, texts, 0.1) == ([1.0, 0.0, 0.0], [True, False, False])
    finally:
        grader.close()
    questions, grader = reward_inputs(DatasetSpec(source="builtin:arithmetic", limit=1, difficulty=[0]), "auto",
                                      settings)
    try:
        gold = questions[0].answer
        texts = [f"so \\boxed{{{gold}}}", f"so \\boxed{{{int(gold) + 1}}}", f"the answer is {int(gold) + 1}"]
        assert grader.kind == "math"
        assert rewards(grader, questions * 3, texts, 0.1) == ([1.1, 0.1, 0.0], [True, False, False])
    finally:
        grader.close()


HOSTILE = {  # each body does its damage first and then returns the right answer: contained, it cannot pass
    "infinite loop": "    while True:\n        pass\n",
    "fork bomb": "    import os\n    while True:\n        os.fork()\n",
    "10 GB allocation": "    x = bytearray(10 * 1024 ** 3)\n    return a + b\n",
    "write outside the temp dir": "    open({outside!r}, 'w').write('x')\n    return a + b\n",
    "read a file outside it": "    assert 'polya-secret' in open({secret!r}).read()\n    return a + b\n",
    "open a network socket": "    import socket\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                             "    return a + b\n",
    "print 100 MB": "    import sys\n    sys.stdout.write('x' * (100 << 20))\n    return a + b\n",
    "kill the parent": "    import os, signal\n    os.kill(os.getppid(), signal.SIGKILL)\n    os.killpg(0, 9)\n",
}


def test_hostile_completions_fail_and_the_grader_carries_on(tmp_path):
    """The issue's corpus as code answers graded in one batch beside right ones: every hostile sample fails within
    its limits, nothing reaches the host, the right answers after them still pass and this process lives on."""
    import socket
    import time

    sandbox_or_skip()
    from polya.data import Question

    q = Question(id="t/0", question="", answer="    return a + b\n",
                 meta={"prompt": "def add(a, b):\n", "test": "def check(c):\n    assert c(2, 3) == 5\n",
                       "entry_point": "add"})
    secret, outside = tmp_path / "secret.txt", tmp_path / "escaped"
    secret.write_text("polya-secret")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        bodies = {k: v.format(outside=str(outside), secret=str(secret), port=server.getsockname()[1])
                  for k, v in HOSTILE.items()}
        t0 = time.monotonic()
        with Graders(GraderSettings(workers=2)) as graders:
            verdicts = graders["code"].grade([q] * (len(bodies) + 2), [q.answer, *bodies.values(), q.answer])
        took = time.monotonic() - t0
    statuses = dict(zip(bodies, (v.status for v in verdicts[1:-1])))
    assert verdicts[0].correct and verdicts[-1].correct, statuses
    assert not any(v.correct for v in verdicts[1:-1]), statuses
    assert statuses["infinite loop"] == "timeout" and not outside.exists()
    assert took < 120, took  # 2 sandboxes, 10 s wall limit each: two timeouts and quick failures
