"""Question sets: the seeded arithmetic generator, file loading with field mapping, bad rows reported."""
from __future__ import annotations

import json
import re

import pytest

from polya.data import arithmetic, load_questions
from polya.spec import BenchmarkSpec, DatasetSpec


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
    a = arithmetic(60, seed=3, difficulty=[1, 2, 3])
    assert a == arithmetic(60, seed=3, difficulty=[1, 2, 3])
    assert a != arithmetic(60, seed=4, difficulty=[1, 2, 3])
    assert arithmetic(10, seed=3, difficulty=[1, 2, 3]) == a[:10]  # question i does not depend on n
    assert {q.meta["difficulty"] for q in a} == {1, 2, 3}
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
