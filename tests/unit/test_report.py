"""The run report's GRPO section: first and last five steps' training reward, by hand-computed values."""
from __future__ import annotations

import math

from polya.analysis import report
from polya.analysis.report import reward_windows


def _rows(rewards: list[float]) -> list[dict]:
    return [{"step": i, "reward_mean": r, "pass_rate": r / 2, "zero_signal_groups": 1} for i, r in enumerate(rewards)]


def test_reward_windows_average_the_first_and_last_five_scored_steps():
    rows = _rows([0.1, 0.2, 0.3, 0.4, 0.5, 9.0, 0.6, 0.7, 0.8, 0.9, 1.0]) + [{"step": 11}]  # an unscored row
    first, last = reward_windows(rows)
    assert math.isclose(first, 0.3) and math.isclose(last, 0.8)  # (0.1..0.5)/5 and (0.6..1.0)/5; 9.0 in neither


def test_short_runs_compare_their_halves():
    assert reward_windows(_rows([0.0, 1.0, 2.0, 3.0])) == (0.5, 2.5)
    assert reward_windows(_rows([0.4])) == (0.4, 0.4)
    assert all(math.isnan(v) for v in reward_windows([]))


def test_the_report_states_the_rise_of_the_training_reward():
    text = "\n".join(report._grpo_section(_rows([0.1, 0.1, 0.2, 0.2, 0.2, 0.5, 0.5, 0.6, 0.6, 0.6])))
    assert "10 steps; means over the first and the last 5 steps (10 zero-signal groups in all)" in text
    assert "| reward | 0.160 | 0.560 | +0.400 |" in text
    assert "| pass rate | 0.080 | 0.280 | +0.200 |" in text
    assert report._grpo_section(_rows([0.3])) == []
