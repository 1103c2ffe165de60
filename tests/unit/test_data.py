"""Question sets: the seeded arithmetic generator, file loading with field mapping, bad rows reported."""
from __future__ import annotations

import json
import re

import pytest

from polya.data import NOT_AN_OBJECT, arithmetic, load_questions
from polya.spec import BenchmarkSpec, DatasetSpec
from polya.validation import UserError


def _solve(q: str) -> int:
    """An independent solver for the generator's templates (checks every answer is exact)."""
    nums = [int(x) for x in re.findall(r"\d+", q)]
    if "gets" in q and "more" in q:
        return nums[0] + nums[1]
    if "gives away" in q:
        return nums[0] - nums[1]
    if "already had" in q:
        return nums[0] * nums[1] + nums[2]
    if "shares" in q:
        return nums[0] // nums[1] + nums[2]
    if "as many" in q:
        return nums[1] % nums[0]
    if "doubled" in q:
        return nums[1] // 2 + nums[0]
    raise AssertionError(f"unknown template: {q}")


def test_arithmetic_is_seeded_and_exact():
    a = arithmetic(60, seed=3, difficulty=[0, 1, 2, 3])
    assert a == arithmetic(60, seed=3, difficulty=[0, 1, 2, 3])
    assert a != arithmetic(60, seed=4, difficulty=[0, 1, 2, 3])
    assert arithmetic(10, seed=3, difficulty=[0, 1, 2, 3]) == a[:10]  # question i does not depend on n
    assert {q.meta["difficulty"] for q in a} == {0, 1, 2, 3}
    for q in a:  # level 0: single-digit operands only
        if q.meta["difficulty"] == 0:
            assert all(len(tok) == 1 for tok in re.findall(r"\d+", q.question)), q.question
    assert len({q.id for q in a}) == 60
    for q in a:
        assert int(q.answer) == _solve(q.question), q.question
        assert int(q.answer) >= 0


def test_arithmetic_rejects_unknown_levels():
    with pytest.raises(ValueError):
        arithmetic(3, difficulty=[4])


def test_builtin_source_through_spec():
    qs, report = load_questions(DatasetSpec(source="builtin:arithmetic", limit=12, seed=7, difficulty=[2]))
    assert len(qs) == 12 and report.kept == 12 and report.rejected == 0
    assert all(q.meta["difficulty"] == 2 for q in qs)


def test_jsonl_bad_rows_are_reported_not_fatal(tmp_path):
    path = tmp_path / "qs.jsonl"
    rows = [
        json.dumps({"problem": "1+1?", "answer": "2", "uid": "a"}),
        "{not json",
        json.dumps({"problem": "", "answer": "3", "uid": "b"}),
        json.dumps({"problem": "2+2?", "uid": "c"}),
        json.dumps({"problem": "3+3?", "answer": ["6", "6.0"], "uid": "d"}),
        json.dumps({"problem": "again", "answer": "1", "uid": "a"}),
        "",
    ]
    path.write_text("\n".join(rows) + "\n")
    qs, report = load_questions(DatasetSpec(source=str(path), idField="uid"))
    assert [(q.id, q.answer) for q in qs] == [("a", "2"), ("d", "6")]
    assert report.rows == 6 and report.kept == 2 and report.rejected == 4
    assert report.bad["duplicate id"] == 1
    assert any("invalid JSON" in r for r in report.bad)
    assert "2/6 rows kept" in report.summary()


def test_jsonl_rows_that_are_not_objects_are_counted(tmp_path):
    """Valid JSON that is not an object (a number, a list, a string, null) is a bad row, not a crash."""
    path = tmp_path / "qs.jsonl"
    path.write_bytes(b"\n".join([b"42", b"[1, 2]", b'"x"', b"null", b"true",
                                  json.dumps({"problem": "1+1?", "answer": "2"}).encode(),
                                  b"\x80\x81 not utf-8", json.dumps({"problem": "2+2?", "answer": 4}).encode()]) + b"\n")
    qs, report = load_questions(DatasetSpec(source=str(path)))
    assert [(q.id, q.answer) for q in qs] == [("5", "2"), ("7", "4")]
    assert report.rows == 8 and report.kept == 2
    assert report.bad == {NOT_AN_OBJECT: 5, "invalid JSON (not UTF-8 text)": 1}
    assert report.examples[0] == "row 0: row is not an object"
    assert "2/8 rows kept (rejected: 1 invalid JSON (not UTF-8 text), 5 row is not an object)" in report.summary()


@pytest.mark.parametrize("content, kept, bad", [
    ('[42, {"problem": "a?", "answer": "1"}, null, [1]]', 1, {NOT_AN_OBJECT: 3}),
    ('{"train": [{"problem": "a?", "answer": "1"}, "x"]}', 1, {NOT_AN_OBJECT: 1}),
    ('{"data": [{"problem": "a?", "answer": "1"}]}', 1, {}),
])
def test_json_rows_that_are_not_objects_are_counted(tmp_path, content, kept, bad):
    path = tmp_path / "qs.json"
    path.write_text(content)
    qs, report = load_questions(DatasetSpec(source=str(path)))
    assert report.kept == kept == len(qs) and report.bad == bad


@pytest.mark.parametrize("name, content, reason", [
    ("qs.json", "42", "top level is int, not a list of objects"),
    ("qs.json", '"text"', "top level is str, not a list of objects"),
    ("qs.json", '{"problem": "a?", "answer": "1"}', "top-level object has no 'train' or 'data' list of rows"),
    ("qs.json", '{"train": 5}', "top-level object has no 'train' or 'data' list of rows"),
    ("qs.json", "{not json", "invalid JSON"),
    ("qs.jsonl", '42\n[1]\n"x"\nnull\n', "4 row is not an object"),
    ("qs.jsonl", '{"q": "1+1?", "a": "2"}\n', "missing or empty 'problem'"),
    ("qs.jsonl", "", "no rows"),
    ("qs.parquet", "PAR1 not a parquet file", "not a readable parquet file"),
    ("qs.jsonl.gz", "not gzip", "cannot be read"),
])
def test_a_source_without_a_usable_question_is_one_clear_error(tmp_path, name, content, reason):
    """Nothing usable at all (a wrong top level, only bad rows, an empty or corrupt file): a UserError naming
    the file, the reasons and the fields to check, never a traceback from inside the loader."""
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError) as caught:
        load_questions(DatasetSpec(source=str(path)))
    message = str(caught.value)
    assert str(path) in message and reason in message and "\n" not in message


def test_parquet_with_wrong_types(tmp_path):
    """Cells of the wrong type are bad rows with a reason: a number as the question, an object or NaN as the
    answer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qs.parquet"
    pq.write_table(pa.table({"problem": ["a?", "b?", "c?", "d?"], "answer": [1.0, float("nan"), 3.0, 4.5]}), path)
    qs, report = load_questions(DatasetSpec(source=str(path)))
    assert [q.answer for q in qs] == ["1", "3", "4.5"] and report.bad == {"no usable answer in 'answer'": 1}
    pq.write_table(pa.table({"problem": [1, 2], "answer": [{"x": 1}, {"x": 2}]}), path)
    with pytest.raises(UserError, match="2 'problem' is not text"):
        load_questions(DatasetSpec(source=str(path)))
    pq.write_table(pa.table({"problem": ["a?", "b?"], "answer": [{"x": 1}, {"x": 2}]}), path)
    with pytest.raises(UserError, match="2 no usable answer in 'answer'"):
        load_questions(DatasetSpec(source=str(path)))


def test_parquet_and_limit(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "qs.parquet"
    pq.write_table(pa.table({"q": ["a?", "b?", "c?"], "a": ["1", "2", "3"]}), path)
    qs, _ = load_questions(BenchmarkSpec(name="p", source=str(path), questionField="q", answerField="a", limit=2))
    assert [q.answer for q in qs] == ["1", "2"]


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_questions(DatasetSpec(source=str(tmp_path / "nope.jsonl")))


def test_real_benchmark_files(shared_data):
    gsm, rep = load_questions(BenchmarkSpec(name="gsm8k", source=str(shared_data / "gsm8k.jsonl"),
                                            questionField="question", answerField="answer"))
    assert rep.kept == 1319 and gsm[0].answer == "18"
    minerva, rep = load_questions(BenchmarkSpec(name="minerva", source=str(shared_data / "minerva_math.jsonl"),
                                                answerField="solution", answerFormat="boxed"))
    assert rep.kept == 272 and rep.rejected == 0
    olymp, rep = load_questions(BenchmarkSpec(name="ob", source=str(shared_data / "olympiadbench.jsonl"),
                                              questionField="question", answerField="final_answer"))
    assert rep.kept == 675 and all(q.answer for q in olymp)
    amc, _ = load_questions(BenchmarkSpec(name="amc23", source=str(shared_data / "amc23.jsonl")))
    assert amc[0].answer == "27"
    train, rep = load_questions(DatasetSpec(source=str(shared_data / "math_train.jsonl"), idField="unique_id"))
    assert rep.kept == 7496 and rep.bad == {"no usable answer in 'answer'": 4}  # 2 null + 2 empty answers
