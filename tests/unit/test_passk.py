"""The unbiased pass@k estimator against hand-computed values."""
from __future__ import annotations

from math import comb

import pytest

from polya.analysis.passk import mean_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        (4, 1, 1, 0.25),            # one right of four: a single draw hits it 1/4 of the time
        (4, 1, 2, 0.5),             # 1 - C(3,2)/C(4,2) = 1 - 3/6
        (4, 2, 2, 1 - 1 / 6),       # 1 - C(2,2)/C(4,2)
        (5, 0, 3, 0.0),
        (5, 5, 1, 1.0),
        (10, 3, 8, 1.0),            # n - c = 7 < k: every draw of 8 contains a correct one
        (64, 1, 64, 1.0),
        (64, 1, 1, 1 / 64),
    ],
)
def test_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_matches_binomial_formula_everywhere():
    for n in (1, 2, 7, 16, 64):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - comb(n - c, k) / comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-9)


def test_mean_over_problems_in_percent():
    # problem A: 2 of 4 right, problem B: none right
    out = mean_pass_at_k([(4, 2), (4, 0)], [1, 2, 4])
    assert out[1] == pytest.approx(25.0)
    assert out[2] == pytest.approx(100 * (1 - 1 / 6) / 2)
    assert out[4] == pytest.approx(50.0)


@pytest.mark.parametrize("n, c, k", [(4, 5, 1), (4, 1, 0), (4, 1, 5), (4, -1, 1)])
def test_invalid(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)
