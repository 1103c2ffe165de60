"""One grader per benchmark kind (`polya.benchmarks`): the prompt a question is asked with, and a batch
``grade(questions, completions) -> [Verdict]`` (one question per completion; ``Verdict.status`` is "correct"
for a right answer whatever the kind, so pass@k and the sweep report count every kind alike).

* **math** — today's prompt (`polya.heuristics.render_prompt`, no heuristic, ``heuristics.fewShot``) and
  math-verify (`polya.verify.Verifier`): unchanged, so math figures do not move.
* **code** — "complete the function" with the HumanEval prompt in a code block, through the model's chat
  template. The program run is the HumanEval prompt + the completion's code + the tests + ``check(entry)``, in
  the sandbox (`polya.sandbox`, a pool of isolated processes). The code is the last fenced block defining the
  entry point (else the longest block, else the text itself, cut at a closing fence or a top-level
  ``if __name__``/``print(``/``assert``); a completion that defines the function is appended after the prompt
  (the later definition wins, the prompt's imports and helpers stay), one that does not is the body (indented
  when it is flush left). A pass is exit status 0 *and* a random token printed after ``check`` returns, so a
  completion calling ``sys.exit(0)`` before the tests fails. Statuses: correct, incorrect (tests fail, the
  program does not run or is killed at a limit), timeout, unparsable (no code), error (the sandbox failed).
  Not closed (HumanEval's own harness has the same holes): the program can read its own source, token
  included, and print it before ``os._exit(0)``; a return value whose ``__eq__`` is always true passes
  ``assert f(x) == y``. Deliberate cheating, not a wrong answer — under ``grpo.reward: code`` an RL policy
  could learn it, so look at samples of a code-rewarded run.
* **choice** — the story, the question, the lettered options and "end with 'Answer: <letter>'", through the
  chat template; the chosen letter (`extract_letter`) compared with the gold one. Statuses: correct,
  incorrect, unparsable (no letter found).
"""
from __future__ import annotations

import re
import secrets
import textwrap
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from polya.benchmarks import LETTERS
from polya.data import Question
from polya.heuristics import render_prompt
from polya.validation import UserError
from polya.verify import Verdict, Verifier


@dataclass(frozen=True)
class GraderSettings:
    workers: int = 2  # math-verify processes, sandbox processes
    verify_timeout_s: float = 5.0
    few_shot: bool = True  # the math prompt's worked example (heuristics.fewShot)


def chat_prompt(tokenizer: Any, user: str) -> str:
    """One user turn through the model's chat template (a plain transcript for a model without one)."""
    messages = [{"role": "user", "content": user}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return f"User: {user}\n\nAssistant:"


# ------------------------------------------------------------------------------------------------- math
class MathGrader:
    kind = "math"

    def __init__(self, settings: GraderSettings):
        self.few_shot = settings.few_shot
        self.verifier = Verifier(workers=settings.workers, timeout_s=settings.verify_timeout_s)

    def prompt(self, tokenizer: Any, q: Question) -> str:
        return render_prompt(tokenizer, q.question, None, few_shot=self.few_shot)

    def grade(self, questions: Sequence[Question], completions: Sequence[str]) -> list[Verdict]:
        return self.verifier.verify_many([q.answer for q in questions], completions)

    def close(self) -> None:
        self.verifier.close()


# ----------------------------------------------------------------------------------------------- choice
CHOICE_INSTRUCTION = ("Think it through step by step, then end your reply with a line 'Answer: X', where X is "
                      "the letter of the one option you choose ({letters}).")
_ANSWER = r"(?i:answer)[\s:*_]*(?:(?i:is)\b[\s:*_]*)?"
_NOT_AFTER = r"(?![A-Za-z0-9'])"
_ARTICLE_OK = {"is", "was", "seems", "would", "must", "fits", "has", "had"}  # "A is ..." names option A


def _letter_patterns(letters: str) -> list[re.Pattern]:
    L = f"([{letters}])"
    return [re.compile(r"\\boxed\{\s*(?:\\text(?:bf)?\{)?\s*\(?" + L + _NOT_AFTER),
            re.compile(_ANSWER + r"(?:(?i:option|choice)\s+)?[(\[*_]*" + L + _NOT_AFTER),
            re.compile(r"\(" + L + r"\)")]


def _norm(text: str) -> str:
    return re.sub(r"[\s*_`'\".:;,!()\[\]]+", " ", text).strip().casefold()


def _standalone(text: str, letters: str) -> str | None:
    """The last valid letter standing alone, not the article "A" (or pronoun "I") starting a phrase."""
    found = None
    for m in re.finditer(rf"(?<![A-Za-z0-9'])([{letters}])" + _NOT_AFTER, text):
        word = re.match(r"\s+([a-z]+)", text[m.end():])
        if m.group(1) in "AI" and word and word.group(1) not in _ARTICLE_OK:
            continue
        found = m.group(1)
    return found


def _answer_text(text: str, choices: Sequence[str]) -> str | None:
    """The option whose text follows the last "answer" (``Answer: Ana``)."""
    tails = [m.group(1) for m in re.finditer(_ANSWER + r"([^\n]+)", text)]
    folded = [_norm(c) for c in choices]
    return LETTERS[folded.index(_norm(tails[-1]))] if tails and _norm(tails[-1]) in folded else None


def _named(text: str, choices: Sequence[str]) -> str | None:
    """The option the whole reply is, or the only option its last line names."""
    folded = [_norm(c) for c in choices]
    if _norm(text) in folded:
        return LETTERS[folded.index(_norm(text))]
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = _norm(lines[-1]) if lines else ""
    named = [i for i, c in enumerate(folded) if re.search(rf"(?<!\w){re.escape(c)}(?!\w)", last)]
    named = [i for i in named if not any(j != i and folded[i] in folded[j] for j in named)]  # "kitchen drawer"
    return LETTERS[named[0]] if len(named) == 1 else None


def extract_letter(text: str, choices: Sequence[str]) -> str | None:
    """The option letter a reply chooses among ``len(choices)`` options, or None. In order: the last
    ``\\boxed{X}``, the last "Answer: X" / "answer is (X)", an answer that is an option's text, then on the last
    line only the last "(X)" or the last letter standing alone (not the article "A ..."), the reply being an
    option's text or its last line naming exactly one option."""
    letters = LETTERS[: len(choices)]
    boxed, answer, paren = _letter_patterns(letters)
    for pattern in (boxed, answer):
        hits = pattern.findall(text)
        if hits:
            return hits[-1]
    by_answer = _answer_text(text, choices)
    if by_answer:
        return by_answer
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    last = lines[-1] if lines else ""  # the weak fallbacks read the conclusion only, not letters met on the way
    hits = paren.findall(last)
    return hits[-1] if hits else _standalone(last, letters) or _named(text, choices)


def choice_prompt(tokenizer: Any, q: Question) -> str:
    letters = ", ".join(LETTERS[: len(q.meta["choices"])])
    return chat_prompt(tokenizer, f"{q.question}\n\n" + CHOICE_INSTRUCTION.format(letters=letters))


class ChoiceGrader:
    kind = "choice"

    def __init__(self, settings: GraderSettings):
        pass

    def prompt(self, tokenizer: Any, q: Question) -> str:
        return choice_prompt(tokenizer, q)

    def grade(self, questions: Sequence[Question], completions: Sequence[str]) -> list[Verdict]:
        out = []
        for q, text in zip(questions, completions):
            got = extract_letter(text, q.meta["choices"])
            out.append(Verdict("unparsable" if got is None else "correct" if got == q.answer else "incorrect", got))
        return out

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------- code
CODE_INSTRUCTION = ("Complete the following Python function. Reply with the complete function (its signature "
                    "included) in one ```python code block.\n\n```python\n{prompt}```")
_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)
_STOPS = re.compile(r"^(?:```|if __name__|print\(|assert )", re.M)
_TOP_LEVEL = re.compile(r"^(?:import |from |def |class |@)", re.M)


def code_prompt(tokenizer: Any, q: Question) -> str:
    return chat_prompt(tokenizer, CODE_INSTRUCTION.format(prompt=q.meta["prompt"]))


def _defines(code: str, entry: str) -> bool:
    return re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.M) is not None


def extract_code(completion: str, entry: str) -> str:
    """The code of a completion: the last fenced block defining ``entry`` (else the longest block); unfenced,
    the text from its first top-level statement when it defines ``entry``, cut at a stop line."""
    blocks = _FENCE.findall(completion)
    if blocks:
        defining = [b for b in blocks if _defines(b, entry)]
        return defining[-1] if defining else max(blocks, key=len)
    text = completion
    if re.search(rf"^def\s+{re.escape(entry)}\s*\(", text, re.M):
        text = text[_TOP_LEVEL.search(text).start():]
    stop = _STOPS.search(text)
    return text[: stop.start()] if stop else text


def build_program(q: Question, completion: str, token: str = "") -> tuple[str | None, str]:
    """(program to run, the code taken from the completion); no program when the completion holds no code.
    The program prints ``token`` after ``check`` returns (a completion that exits early with status 0 has not
    passed)."""
    entry, prompt = q.meta["entry_point"], q.meta["prompt"]
    code = extract_code(completion, entry)
    if not code.strip():
        return None, code
    if _defines(code, entry):
        solution = prompt.rstrip("\n") + "\n\n\n" + code
    else:
        lines = [ln for ln in code.splitlines() if ln.strip()]
        flush = lines and not lines[0][:1].isspace() and textwrap.dedent(code) == code
        solution = prompt + (textwrap.indent(code, "    ") if flush else code)
    done = f"print({token!r})\n" if token else ""
    return f"{solution.rstrip()}\n\n\n{q.meta['test']}\n\ncheck({entry})\n{done}", code


def _grading_limits():
    from polya.sandbox import Limits

    # a HumanEval program needs one process and little memory; a pool of them must not crowd out the engine:
    # 8 processes x 1 GiB at most per program, and 64 KiB of output kept (the pass token comes last)
    return Limits(wall_s=10.0, cpu_s=10.0, memory_mb=1024, nproc=8, output_bytes=64 << 10)


class CodeGrader:
    kind = "code"

    def __init__(self, settings: GraderSettings):
        from polya import sandbox

        reason = sandbox.unavailable()
        if reason:
            raise UserError(f"code benchmarks run their tests in the sandbox, which is unavailable here: {reason}")
        self.pool = sandbox.SandboxPool(workers=settings.workers, limits=_grading_limits())

    def prompt(self, tokenizer: Any, q: Question) -> str:
        return code_prompt(tokenizer, q)

    def grade(self, questions: Sequence[Question], completions: Sequence[str]) -> list[Verdict]:
        token = f"polya-passed-{secrets.token_hex(8)}"
        built = [build_program(q, c, token) for q, c in zip(questions, completions)]
        runnable = [i for i, (program, _) in enumerate(built) if program is not None]
        outcomes = dict(zip(runnable, self.pool.run_all([built[i][0] for i in runnable])))
        out = []
        for i, (_, code) in enumerate(built):
            o = outcomes.get(i)
            status = ("unparsable" if o is None else "correct" if o.passed and o.stdout.rstrip().endswith(token)
                      else o.status if o.status in ("timeout", "error") else "incorrect")  # error: the sandbox failed
            out.append(Verdict(status, code))
        return out

    def close(self) -> None:
        close = getattr(self.pool, "close", None)
        if close:
            close()


# ------------------------------------------------------------------------------------------------ table
GRADERS: dict[str, Callable[[GraderSettings], Any]] = {"math": MathGrader, "code": CodeGrader, "choice": ChoiceGrader}


class Graders:
    """The grader of each kind, built on first use and closed together: ``with Graders(settings) as g:
    g["code"].grade(questions, completions)``."""

    def __init__(self, settings: GraderSettings = GraderSettings()):
        self.settings = settings
        self._made: dict[str, Any] = {}

    def __getitem__(self, kind: str):
        if kind not in self._made:
            self._made[kind] = GRADERS[kind](self.settings)
        return self._made[kind]

    def __enter__(self) -> "Graders":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for grader in self._made.values():
            grader.close()
        self._made.clear()
