"""Which traces become SFT data: best correct per (question, heuristic), STaR, the keepIncorrect ablation, and\nthe incorrect-only ablation with a controlled number of incorrect approaches per question."""
from __future__ import annotations

import pytest

from polya.selection import Candidate, select


def C(i, q, h, s, ok, a=None):
    return Candidate(i, q, h, s, ok, a)


CANDS = [
    C(0, "q1", "h1", 0, True, 0.2),
    C(1, "q1", "h1", 1, True, 0.9),    # best correct of (q1, h1)
    C(2, "q1", "h1", 2, False, 0.99),  # more adherent but wrong: never kept in heuristic mode
    C(3, "q1", "h2", 0, False, 0.5),
    C(4, "q1", "h2", 1, False, 0.7),   # best incorrect of (q1, h2)
    C(5, "q2", "h1", 0, True, None),   # unscored correct traces: the first sample wins
    C(6, "q2", "h1", 1, True, None),
    C(7, "q2", "h2", 0, True, 0.4),
    C(8, "q2", "h2", 1, True, 0.4),    # a tie: the lower sample index wins
]


def test_best_correct_per_group():
    assert select(CANDS) == [1, 5, 7]


def test_keep_incorrect_admits_a_fraction_of_best_incorrect():
    # best-incorrect candidates: (q1,h1) -> 2, (q1,h2) -> 4; f = 0.5 admits one of them
    kept = select(CANDS, keep_incorrect=0.5, seed=3)
    extra = set(kept) - {1, 5, 7}
    assert len(extra) == 1 and extra <= {2, 4}
    assert select(CANDS, keep_incorrect=0.5, seed=3) == kept  # seeded
    assert set(select(CANDS, keep_incorrect=1.0)) == {1, 2, 4, 5, 7}


def test_star_keeps_one_correct_per_question():
    kept = select(CANDS, mode="star")
    assert kept == [1, 7]  # q1: highest adherence among correct; q2: 0.4 beats unscored


def test_nothing_correct_nothing_kept():
    assert select([C(0, "q", "h", 0, False, 1.0)]) == []


def test_bad_fraction():
    with pytest.raises(ValueError):
        select(CANDS, keep_incorrect=1.5)


# q3: four heuristics, each with an incorrect trace (two of them also with a correct one)
WRONG = [C(10 + 2 * j, "q3", f"h{j}", 0, False, 0.1 * j) for j in range(4)] + \
        [C(11 + 2 * j, "q3", f"h{j}", 1, j < 2, 0.5) for j in range(4)]


def test_keep_incorrect_only_keeps_the_best_incorrect_per_group():
    # (q1,h1): 2 (0.99 beats nothing else wrong); (q1,h2): 4 (0.7 > 0.5); q2 has no incorrect trace
    assert select(CANDS, keep="incorrect") == [2, 4]
    # q3: h0, h1 have one incorrect trace each (10, 12); h2, h3 two (14 at 0.2 vs 15 at 0.5 -> 15; 16 vs 17 -> 17)
    assert select(WRONG, keep="incorrect") == [10, 12, 15, 17]
    assert select(CANDS + WRONG, keep="incorrect", mode="star") == [2, 15]  # one per question: the most adherent


def test_incorrect_per_question_controls_the_number_of_approaches():
    everything = select(CANDS + WRONG, keep="incorrect")
    for m in (1, 2, 3):
        kept = select(CANDS + WRONG, keep="incorrect", incorrect_per_question=m, seed=5)
        per_q = {q: sum(1 for c in CANDS + WRONG if c.index in kept and c.question_id == q) for q in ("q1", "q3")}
        assert per_q == {"q1": min(m, 2), "q3": m}, m
        assert set(kept) <= set(everything)
        assert kept == select(CANDS + WRONG, keep="incorrect", incorrect_per_question=m, seed=5)  # seeded
    picks = {tuple(select(WRONG, keep="incorrect", incorrect_per_question=2, seed=s)) for s in range(20)}
    assert len(picks) > 1  # the seed decides which approaches
    assert select(WRONG, keep="incorrect", incorrect_per_question=9) == everything[-4:]
    # nested: an arm with fewer incorrect approaches keeps a subset of the next arm's (64 heuristics: also
    # where random.sample would switch algorithm between m and m + 1)
    many = [C(i, "q9", f"h{i}", 0, False, 0.1) for i in range(64)]
    for s in range(5):
        sets = [set(select(many, keep="incorrect", incorrect_per_question=m, seed=s)) for m in range(1, 30)]
        assert all(a < b for a, b in zip(sets, sets[1:])), s
    with pytest.raises(ValueError, match="keep"):
        select(CANDS, keep="wrong")


def test_the_filter_scores_adherence_of_the_traces_its_selection_reads():
    """keep: incorrect picks the most adherent *incorrect* trace per group: those are the ones scored (an
    unscored incorrect trace would make the ablation pick by sample index); keep: correct scores the correct
    ones, and the incorrect ones too only when keepIncorrect admits some."""
    from polya.stages.filter import needs_adherence

    correct = [True, False, False, True, False]
    assert needs_adherence(correct, "incorrect", 0.0) == [1, 2, 4]
    assert needs_adherence(correct, "correct", 0.0) == [0, 3]
    assert needs_adherence(correct, "correct", 0.25) == [0, 1, 2, 3, 4]
