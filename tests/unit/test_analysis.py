"""Vendi diversity, composition decisions and judge-score parsing (pure functions)."""
from __future__ import annotations

import numpy as np
import pytest

from polya.analysis.composition import composition_rate
from polya.analysis.diversity import vendi_from_embeddings
from polya.analysis.heuristic_matcher import heuristics_used, split_steps
from polya.reward import parse_judge_score


def test_vendi_extremes_and_reference_implementation():
    same = np.tile(np.array([[1.0, 2.0, 3.0]]), (8, 1))
    assert vendi_from_embeddings(same) == pytest.approx(1.0)
    assert vendi_from_embeddings(np.eye(6)) == pytest.approx(6.0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    from vendi_score import vendi

    assert vendi_from_embeddings(x) == pytest.approx(vendi.score_K(x @ x.T), rel=1e-6)
    assert vendi_from_embeddings(np.zeros((0, 4))) == 0.0


def test_heuristics_used_and_rate():
    sims = np.array([[0.8, 0.1, 0.2],   # step 0 -> heuristic 0
                     [0.3, 0.5, 0.1],   # step 1 -> heuristic 1
                     [0.2, 0.25, 0.3]])  # step 2 -> heuristic 2, but below threshold
    assert heuristics_used(sims, 0.35) == {0, 1}
    assert heuristics_used(sims, 0.9) == set()
    assert heuristics_used(np.zeros((0, 3)), 0.1) == set()
    assert composition_rate([{0, 1}, {0}, set(), {1, 2, 3}]) == 0.5


def test_split_steps():
    assert split_steps("First, add 3 and 4 to get 7. Then double it.\nSo 14 is the answer!") == [
        "First, add 3 and 4 to get 7.", "Then double it.", "So 14 is the answer!"]


@pytest.mark.parametrize(
    "text, expected",
    [("Score: 10", 1.0), ("score = 1", 0.0), ("I'd say 7/10.", 6 / 9), ("**4**", 3 / 9), ("5", 4 / 9),
     ("Score: 42", None), ("no grade here", None), ("Score: 0", 0.0)],
)
def test_parse_judge_score(text, expected):
    got = parse_judge_score(text)
    assert got == (pytest.approx(expected) if expected is not None else None)


def test_judge_composition_parsing_and_prompt():
    from polya.analysis.heuristic_judge import judge_prompt, parse_judge_answer
    from polya.heuristics import select

    prompt = judge_prompt("First split the sum into parts.")
    assert "1. Decompose and recombine" in prompt and "64. Simulate step by step" in prompt
    hs = select(count=4)
    assert parse_judge_answer("1, 3", hs) == {"decompose-recombine", "auxiliary-element"}
    assert parse_judge_answer("2 and 9\nbecause 4", hs) == {"work-backwards"}  # 9 is out of range, later lines ignored
    assert parse_judge_answer("None of them.", hs) == set()


def test_judge_composition_needs_a_judge(local_doc):
    from polya.validation import validate_doc

    local_doc["spec"]["evaluation"]["composition"] = {"classifier": "judge"}
    _, errors = validate_doc(local_doc)
    assert any("filtering.rewardModel.kind" in str(e) for e in errors)
