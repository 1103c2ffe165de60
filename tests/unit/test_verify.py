"""Answer verification through real math-verify in a process pool."""
from __future__ import annotations

from polya.verify import Verifier, verify_one


def test_verify_one_main_thread():
    assert verify_one("\\frac{1}{2}", "0.5") == "correct"
    assert verify_one("(x+1)^2", "x^2+2x+1") == "correct"
    assert verify_one("3", "4") == "incorrect"
    assert verify_one("3", None) == "unparsable"


def test_pool_verifies_completions_and_counts_unparsable():
    golds = ["19", "\\frac12", "7", "10", "5"]
    completions = [
        "6 x 4 = 24, minus 5 is 19.\n\\boxed{19}",
        "Half of it: \\boxed{0.5}",
        "I think it is \\boxed{8}",
        "I am not sure.",
        "#### 5",
    ]
    with Verifier(workers=2, timeout_s=5) as v:
        verdicts = v.verify_many(golds, completions)
    assert [x.status for x in verdicts] == ["correct", "correct", "incorrect", "unparsable", "correct"]
    assert verdicts[2].predicted == "8" and verdicts[3].predicted is None
