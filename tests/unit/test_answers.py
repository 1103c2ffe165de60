from __future__ import annotations

import pytest

from polya.answers import extract_answer, last_boxed, normalize_gold


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("first \\boxed{1} then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{ {a}+{b} }", "{a}+{b}"),
        ("\\fbox{7}", "7"),
        ("cut off \\boxed{\\frac{1}{", None),
        ("no box here", None),
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("We get 5.\n#### 18", "18"),
        ("Thus the final answer is 3/4.", "3/4"),
        ("The answer is $12$.", "12"),
        ("blah \\boxed{9} and the answer is 10", "9"),
        ("nothing to see", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_gold():
    assert normalize_gold("Janet sells 9.\n#### 1,018") == "1018"
    assert normalize_gold(["\\frac{1}{2}", "0.5"]) == "\\frac{1}{2}"
    assert normalize_gold(27.0) == "27"
    assert normalize_gold("so \\boxed{x^2}", "boxed") == "x^2"
    assert normalize_gold("no hash", "hash") is None
    assert normalize_gold(None) is None and normalize_gold([]) is None and normalize_gold("  ") is None
