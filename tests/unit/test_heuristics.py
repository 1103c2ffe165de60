"""The Pólya catalogue: 64 distinct entries, nested selection, rendering through a real chat template."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from polya import heuristics as H


def test_catalogue_has_64_distinct_complete_entries():
    assert len(H.CATALOGUE) == 64
    assert len({h.id for h in H.CATALOGUE}) == 64
    assert len({h.name for h in H.CATALOGUE}) == 64
    assert len({h.instruction for h in H.CATALOGUE}) == 64
    for h in H.CATALOGUE:
        assert h.id == h.id.lower() and " " not in h.id
        assert "\n" not in h.description and h.description.endswith(".")
        assert len(h.instruction) > 60, h.id


def test_core_polya_heuristics_present():
    ids = set(H.CATALOGUE_IDS)
    for needed in ["work-backwards", "decompose-recombine", "auxiliary-element", "analogy", "specialize",
                   "generalize", "induction", "symmetry", "restate", "continuity"]:
        assert needed in ids


@pytest.mark.parametrize("n", H.NESTED_SIZES)
def test_sets_nest(n):
    chosen = H.select(count=n)
    assert len(chosen) == n
    assert chosen == list(H.CATALOGUE[:n])
    for smaller in [s for s in H.NESTED_SIZES if s < n]:
        assert set(H.select(count=smaller)) <= set(chosen)


def test_first_four_are_the_named_core():
    assert [h.id for h in H.select(count=4)] == ["decompose-recombine", "work-backwards", "auxiliary-element", "analogy"]


def test_select_by_names_and_errors():
    assert [h.id for h in H.select(names=["symmetry", "analogy"])] == ["symmetry", "analogy"]
    with pytest.raises(KeyError):
        H.select(names=["nope"])
    with pytest.raises(ValueError):
        H.select(count=65)


def test_messages_few_shot_and_plain():
    h = H.BY_ID["work-backwards"]
    msgs = H.build_messages("What is 3 + 4?", h, few_shot=True)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user"]
    assert h.instruction in msgs[-1]["content"] and "What is 3 + 4?" in msgs[-1]["content"]
    assert "\\boxed{19}" in msgs[2]["content"] and h.name in msgs[2]["content"]
    plain = H.build_messages("What is 3 + 4?", None, few_shot=False)
    assert [m["role"] for m in plain] == ["system", "user"]
    assert "approach" not in plain[-1]["content"]


def test_render_through_chat_template(tiny_model):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    h = H.BY_ID["analogy"]
    text = H.render_prompt(tok, "What is 3 + 4?", h)
    assert text.startswith("<|im_start|>system\n") and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>user") == 2 and h.instruction in text
    assert "<|im_start|>user" not in H.render_prompt(tok, "Q", h, few_shot=False).split("<|im_start|>user", 1)[1]


def test_render_without_template():
    class Bare:
        chat_template = None

    text = H.render_prompt(Bare(), "What is 1 + 1?", None, few_shot=False)
    assert text.endswith("Assistant:") and "What is 1 + 1?" in text
