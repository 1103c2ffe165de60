"""Pure text helpers for final answers: the last ``\\boxed{...}``, GSM8K's ``#### x``, common phrasings."""
from __future__ import annotations

import re

_BOX_HEADS = ("\\boxed{", "\\fbox{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    start = max(text.rfind(h) for h in _BOX_HEADS)
    if start < 0:
        return None
    i = text.index("{", start) + 1
    depth = 1
    for j in range(i, len(text)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None  # unbalanced: the completion was cut off inside the box


_PHRASES = [
    re.compile(r"####\s*(.+?)\s*$", re.M),
    re.compile(r"final answer\s*(?:is|:)\s*\$?([^\n$]+?)\$?\s*\.?\s*$", re.I | re.M),
    re.compile(r"the answer is\s*:?\s*\$?([^\n$]+?)\$?\s*\.?\s*$", re.I | re.M),
]


def extract_answer(text: str) -> str | None:
    """The final answer a completion states: the last box, else '#### x', else 'the answer is x'."""
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    for pattern in _PHRASES:
        found = pattern.findall(text)
        if found:
            return found[-1].strip()
    return None


def normalize_gold(value, fmt: str = "auto") -> str | None:
    """Gold answer from a dataset cell: lists give their first element, GSM8K cells their '#### x' tail."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        if not value:
            return None
        value = value[0]
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if fmt == "boxed":
        return last_boxed(text)
    if fmt in ("auto", "hash") and "####" in text:
        return text.rsplit("####", 1)[1].strip().replace(",", "")
    if fmt == "hash":
        return None
    return text or None
