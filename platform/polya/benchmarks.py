"""Benchmark kinds: which grader a benchmark needs (read off its file for ``kind: auto``) and the loaders of the
code and multiple-choice formats. Math benchmarks load as every question set does (`polya.data.load_questions`).

* **code** — HumanEval format, one row per problem: ``prompt`` (imports, signature and docstring), ``test``
  (defining ``check(candidate)``), ``entry_point`` (the function's name); ``task_id`` is the id and
  ``canonical_solution``, where present, the gold answer (never used in grading). `Question.meta` holds
  ``prompt``, ``test`` and ``entry_point``.
* **choice** — MuSR format: a story (``context``, or ``narrative`` as on the hub) with either a ``questions``
  list of ``{question, choices, answer}`` (the MuSR repository's files; each question is one row of the report)
  or flat ``question``/``choices``/``answer`` fields (the hub's, where ``choices`` may be a Python list written as
  text). The gold answer is an index into ``choices`` (``answer`` or ``answer_index``), a letter or the text of a
  choice. `Question.question` is the text shown (story, question, options lettered A, B, C…), `Question.answer`
  the gold letter, ``meta["choices"]`` the option texts.
* **auto** — the first object row decides: ``prompt`` + ``test`` + ``entry_point`` → code; a story with
  ``questions`` or ``choices`` → choice; anything else (and ``builtin:`` sources) → math.

Bad rows are counted in a `LoadReport` as `load_questions` counts them; a source without a usable question
raises `UserError`.
"""
from __future__ import annotations

import ast
from typing import Any, Callable

from polya.data import LoadReport, Question, iter_rows, load_questions
from polya.validation import UserError

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CODE_FIELDS = ("prompt", "test", "entry_point")
STORY_FIELDS = ("context", "narrative")
GOLD_FIELDS = ("answer_index", "answer", "answer_choice", "label")


def row_kind(row: dict[str, Any]) -> str:
    """The kind a row's fields say: code (HumanEval), choice (MuSR) or math."""
    if all(isinstance(row.get(f), str) for f in CODE_FIELDS):
        return "code"
    if any(isinstance(row.get(f), str) for f in STORY_FIELDS) and ("questions" in row or "choices" in row):
        return "choice"
    return "math"


def detect_kind(spec: Any) -> str:
    """``spec.kind``, or for ``auto`` (and sources without a kind field) the kind of the first object row."""
    kind = getattr(spec, "kind", "auto")
    if kind != "auto":
        return kind
    if spec.source.startswith("builtin:"):
        return "math"
    rows = iter(iter_rows(spec.source, spec.split))
    try:
        for row, _ in rows:
            if row is not None:
                return row_kind(row)
    finally:
        close = getattr(rows, "close", None)
        if close:
            close()
    return "math"  # no object row at all: the math loader reports what is wrong with the file


def choice_text(story: str, question: str, choices: list[str]) -> str:
    """The story, the question and the options lettered A, B, C… (what a choice prompt shows)."""
    options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return f"{story.strip()}\n\n{question.strip()}\n\n{options}"


# ------------------------------------------------------------------------------------------------- code
def code_question(row: dict[str, Any], index: int, id_field: str | None) -> Question | str:
    """A HumanEval row as a `Question`, or the reason it cannot be one."""
    for f in CODE_FIELDS:
        if not isinstance(row.get(f), str) or not row[f].strip():
            return f"missing or empty {f!r}"
    entry = row["entry_point"].strip()
    if not entry.isidentifier():
        return "'entry_point' is not a Python name"
    if "def check(" not in row["test"]:
        return "'test' defines no check(candidate)"
    qid = str(row.get(id_field or "task_id", index))
    gold = row.get("canonical_solution")
    return Question(id=qid, question=row["prompt"], answer=gold if isinstance(gold, str) else "",
                    meta={"kind": "code", "prompt": row["prompt"], "test": row["test"], "entry_point": entry})


# ----------------------------------------------------------------------------------------------- choice
def _choices(value: Any) -> list[str] | None:
    if isinstance(value, str):  # the hub's MuSR: "['Mackenzie', 'Ana']"
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None
    if not isinstance(value, (list, tuple)) or not 2 <= len(value) <= len(LETTERS):
        return None
    out = [str(c).strip() for c in value if isinstance(c, (str, int, float)) and not isinstance(c, bool)]
    return out if len(out) == len(value) and all(out) else None


def gold_index(item: dict[str, Any], choices: list[str]) -> int | None:
    """The gold option's index: an index field, a letter, a digit string or the text of a choice."""
    for field in GOLD_FIELDS:
        value = item.get(field)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int):
            return value if 0 <= value < len(choices) else None
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 1 and text in LETTERS[: len(choices)]:
                return LETTERS.index(text)
            if text.isdigit():
                return int(text) if int(text) < len(choices) else None
            folded = [c.casefold() for c in choices]
            if text.casefold() in folded:
                return folded.index(text.casefold())
            return None
    return None


def _choice(story: str, item: Any, qid: str) -> Question | str:
    if not isinstance(item, dict):
        return "question is not an object"
    question = item.get("question")
    if not isinstance(question, str) or not question.strip():
        return "missing or empty 'question'"
    choices = _choices(item.get("choices"))
    if choices is None:
        return f"'choices' is not a list of 2-{len(LETTERS)} texts"
    gold = gold_index(item, choices)
    if gold is None:
        return "no usable answer (an index into 'choices', a letter or a choice's text)"
    return Question(id=qid, question=choice_text(story, question, choices), answer=LETTERS[gold],
                    meta={"kind": "choice", "choices": choices})


def choice_questions(row: dict[str, Any], index: int, id_field: str | None) -> list[Question | str]:
    """The questions of a MuSR row (one, or one per entry of its ``questions`` list), or reasons."""
    story = next((row[f] for f in STORY_FIELDS if isinstance(row.get(f), str) and row[f].strip()), None)
    if story is None:
        return ["missing or empty 'context'"]
    base = str(row[id_field]) if id_field and id_field in row else str(index)
    if "questions" not in row:
        return [_choice(story, row, base)]
    items = row["questions"]
    if not isinstance(items, list) or not items:
        return ["'questions' is not a list of questions"]
    return [_choice(story, item, f"{base}.{j}") for j, item in enumerate(items)]


# ------------------------------------------------------------------------------------------------- load
def _row_questions(kind: str) -> Callable[[dict[str, Any], int, str | None], list[Question | str]]:
    if kind == "code":
        return lambda row, i, id_field: [code_question(row, i, id_field)]
    return choice_questions


def load_kind(spec: Any, kind: str) -> tuple[list[Question], LoadReport]:
    """Code or choice questions from ``spec``'s source; every question (or unreadable row) is one report row."""
    report, make = LoadReport(source=spec.source), _row_questions(kind)
    out: list[Question] = []
    seen: set[str] = set()
    for i, (row, bad) in enumerate(iter_rows(spec.source, spec.split)):
        if spec.limit is not None and len(out) >= spec.limit:
            break
        for q in ([bad] if row is None else make(row, i, spec.idField)):
            if spec.limit is not None and len(out) >= spec.limit:
                break
            report.rows += 1
            if isinstance(q, str):
                report.reject(i, q)
            elif q.id in seen:
                report.reject(i, "duplicate id")
            else:
                seen.add(q.id)
                out.append(q)
    report.kept = len(out)
    if not out:
        what = report.summary() if report.rows else f"{spec.source}: no rows (an empty file?)"
        raise UserError(f"{what}: no usable {kind} question; check the file's format or set the benchmark's kind "
                        "(math, code: HumanEval rows; choice: MuSR rows)")
    return out, report


def load_benchmark(spec: Any) -> tuple[str, list[Question], LoadReport]:
    """(kind, questions, report) of a benchmark: its kind decided (`detect_kind`), then loaded by that kind's
    loader (math: `load_questions`, unchanged)."""
    kind = detect_kind(spec)
    if kind == "math":
        math_spec = spec.model_copy(update={"kind": "math"}) if hasattr(spec, "kind") else spec
        return kind, *load_questions(math_spec)
    return kind, *load_kind(spec, kind)
