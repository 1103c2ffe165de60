"""The judge classifier: a generative model reads a rubric listing the whole 64-heuristic catalogue and a
reasoning chain, and names the heuristics the chain uses.

The catalogue is always the whole one, whatever ``heuristics.count`` the run trained with. The answer is
parsed leniently (`parse_judge_answer`): numbers (``2, 5``), ranges (``3-5``), ids (``work-backwards``) or
names (``Work backwards``), bullet or numbered lists, an ``Answer:`` line after some reasoning, markdown,
``none``; numbers outside the catalogue and anything else are ignored.
"""
from __future__ import annotations

import functools
import re
from typing import Sequence

from polya.heuristics import CATALOGUE, Heuristic

RUBRIC = (
    "You classify the problem-solving heuristics used in a solution to a math problem.\n\n"
    "Heuristics:\n{listing}\n\n"
    "Rubric: count a heuristic only if the solution actually carries it out (mentioning it is not enough). "
    "A solution may use several heuristics, or none: routine arithmetic alone uses none. When two "
    "heuristics fit the same step, choose the more specific one.\n\n"
    "Solution:\n{chain}\n\n"
    "Answer with one line: 'Heuristics:' followed by the numbers of the heuristics used, comma-separated "
    "(for example 'Heuristics: 2, 17'), or 'Heuristics: none'."
)
#: characters of a chain the judge sees (its end: where the reasoning concludes)
CHAIN_CHARS = 4000
ANSWER_TOKENS = 48

_THINK = re.compile(r"<think>.*?(</think>|$)", re.S | re.I)
_MARKER = re.compile(r"(?:heuristics?|approaches?|answer|final answer)\s*(?:used)?\s*[:=]", re.I)
_NONE = re.compile(r"^\W*(none|no heuristics?|no approach(es)?|nothing|n/?a)\b", re.I)
_ITEM = re.compile(r"^\s*(?:[-*\u2022]|\d{1,2}[.)])\s+")
_RANGE = re.compile(r"(?<![\d.])(\d{1,2})\s*(?:-|\u2013|to)\s*(\d{1,2})(?![\d.%])")
_NUMBER = re.compile(r"(?<![\d.])#?(\d{1,2})(?![\d%]|\.\d)")
_PARTS = re.compile(r"[,;/+]|\band\b", re.I)


def judge_prompt(chain: str, catalogue: Sequence[Heuristic] = CATALOGUE) -> str:
    listing = "\n".join(f"{i + 1}. {h.name} ({h.id}): {h.description}" for i, h in enumerate(catalogue))
    return RUBRIC.format(listing=listing, chain=chain[-CHAIN_CHARS:])


@functools.lru_cache(maxsize=4)
def _names(catalogue: tuple[Heuristic, ...]) -> list[tuple[re.Pattern, str]]:
    """(pattern for an id or a name, id), longest first so that no name is taken for a shorter one inside it."""
    keys = [(k, h.id) for h in catalogue for k in {h.id, h.name.lower(), h.id.replace("-", " ")}]
    keys.sort(key=lambda kv: -len(kv[0]))
    return [(re.compile(rf"(?<![\w-]){re.escape(k)}(?![\w-])", re.I), hid) for k, hid in keys]


def _numbers(seg: str, catalogue: Sequence[Heuristic]) -> set[str]:
    """The ids numbered in ``seg``: ranges (``3-5``, ``3 to 5``) and single numbers, those in 1..n only."""
    n, found = len(catalogue), set()
    for a, b in _RANGE.findall(seg):
        if 1 <= int(a) <= int(b) <= n:
            found |= {catalogue[i - 1].id for i in range(int(a), int(b) + 1)}
    for x in _NUMBER.findall(_RANGE.sub(" ", seg)):
        if 1 <= int(x) <= n:
            found.add(catalogue[int(x) - 1].id)
    return found


def _line(line: str, catalogue: Sequence[Heuristic], names) -> set[str]:
    """The ids one answer line names: by id or name, and by number in the comma/'and'-separated parts that
    name none (a number beside a name is that name's label: "2 (Work backwards)", "5. Specialize")."""
    found = set()
    for pattern, hid in names:
        if pattern.search(line):
            found.add(hid)
            line = pattern.sub(" \0 ", line)
    for seg in _PARTS.split(line):
        if "\0" not in seg:
            found |= _numbers(seg, catalogue)
    return found


def _lines(text: str) -> list[str]:
    """The part of a judge's answer that holds the verdict: after its last marker, else the whole text."""
    text = _THINK.sub(" ", text).replace("**", "").replace("`", "")
    marks = list(_MARKER.finditer(text))
    if marks:
        text = text[marks[-1].end():]
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def parse_judge_answer(text: str, catalogue: Sequence[Heuristic] = CATALOGUE) -> set[str]:
    """The catalogue ids a judge named in ``text`` (empty for 'none' or for an answer with nothing usable)."""
    lines = _lines(text or "")
    if not lines or _NONE.match(lines[0]):
        return set()
    names = _names(tuple(catalogue))
    items = [ln for ln in lines if _ITEM.match(ln)]
    if len(items) >= 2:  # a list, one heuristic a line: "1. Decompose ...", "- work-backwards"
        return set().union(*(_line(ln, catalogue, names) for ln in items))
    for ln in lines:  # else the first line that names something
        found = _line(ln, catalogue, names)
        if found:
            return found
    return set()


def fit_prompt(chain: str, engine, catalogue: Sequence[Heuristic] = CATALOGUE) -> str:
    """The judge's chat prompt for ``chain``, the chain's start cut until prompt and answer fit the engine's
    context (``max_model_len``); a context too small for the catalogue itself is left to the engine to refuse."""
    keep = min(len(chain), CHAIN_CHARS)
    limit = getattr(engine, "max_model_len", None)
    while True:
        text = judge_prompt(chain[len(chain) - keep:], catalogue)
        prompt = engine.apply_chat_template([{"role": "user", "content": text}])
        over = engine.count_tokens(prompt) + ANSWER_TOKENS - limit if limit else 0
        if over <= 0 or keep == 0:
            return prompt
        per_token = keep / max(1, engine.count_tokens(chain[len(chain) - keep:]))  # the chain's own density
        keep = max(0, keep - int(over * per_token) - 8)


async def judge(chains: Sequence[str], engine, catalogue: Sequence[Heuristic] = CATALOGUE) -> list[set[str]]:
    """The catalogue ids each chain uses, as a generative judge (an Engine) names them."""
    from polya.engines.base import Sampling

    if not chains:
        return []
    prompts = [fit_prompt(c, engine, catalogue) for c in chains]
    groups = await engine.generate(prompts, Sampling(temperature=0.0, max_tokens=ANSWER_TOKENS, logprobs=False))
    return [parse_judge_answer(g[0].text if g else "", catalogue) for g in groups]
