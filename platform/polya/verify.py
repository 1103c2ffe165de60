"""Answer verification with math-verify in a process pool, with a per-item time limit.

math-verify bounds its own time with ``signal.alarm``, which only works in a process's main thread: it
raises in Ray actors, Serve replicas and threads. So every item is verified in the main thread of a
pool worker process (where the alarm works), and the parent also waits at most a little longer than
the limit for each item; a worker stuck past that is discarded and the pool rebuilt.
"""
from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing as mp
from dataclasses import dataclass
from typing import Iterable

from polya.answers import extract_answer

STATUSES = ("correct", "incorrect", "unparsable", "timeout", "error")


@dataclass(frozen=True)
class Verdict:
    status: str  # one of STATUSES
    predicted: str | None

    @property
    def correct(self) -> bool:
        return self.status == "correct"


def _wrap(answer: str) -> str:
    answer = answer.strip()
    if answer.startswith("$") or "\\boxed" in answer:
        return answer
    return "\\boxed{" + answer + "}"


def verify_one(gold: str, predicted: str | None, timeout_s: float = 5.0) -> str:
    """Status for one pair; call in a process's main thread (the pool does)."""
    if predicted is None or not predicted.strip():
        return "unparsable"
    from math_verify import parse, verify

    secs = max(1, math.ceil(timeout_s))
    try:
        g = parse(_wrap(gold), parsing_timeout=secs)
        p = parse(_wrap(predicted), parsing_timeout=secs)
        if not g:
            return "error"  # the gold answer itself does not parse
        if not p:
            return "unparsable"
        return "correct" if verify(g, p, timeout_seconds=secs) else "incorrect"
    except TimeoutError:
        return "timeout"
    except Exception:  # noqa: BLE001 - math-verify raises many types on odd input
        return "error"


def _worker_init() -> None:
    import math_verify  # noqa: F401  (import once per worker, not per item)


class Verifier:
    """``with Verifier(workers=2) as v: verdicts = v.verify_many(golds, completions)``."""

    def __init__(self, workers: int = 2, timeout_s: float = 5.0):
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self._pool: cf.ProcessPoolExecutor | None = None

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init)

    def __enter__(self) -> "Verifier":
        self._pool = self._new_pool()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def verify_answers(self, golds: Iterable[str], predicted: Iterable[str | None]) -> list[str]:
        golds, predicted = list(golds), list(predicted)
        if self._pool is None:
            self._pool = self._new_pool()
        futures = [self._pool.submit(verify_one, g, p, self.timeout_s) for g, p in zip(golds, predicted)]
        statuses: list[str] = []
        # the parent's backstop: the worker's own alarm fires first, this catches a worker stuck in C code
        grace = self.timeout_s * 3 + 5
        broken = False
        for fut in futures:
            if broken:
                statuses.append("timeout")
                continue
            try:
                statuses.append(fut.result(timeout=grace))
            except cf.TimeoutError:
                statuses.append("timeout")
                broken = True
            except Exception:  # noqa: BLE001 - a worker crash (BrokenProcessPool)
                statuses.append("error")
        if broken:  # the rest were not waited for; rebuild and redo them
            self.close()
            first = statuses.index("timeout")
            rest = self.verify_answers(golds[first + 1 :], predicted[first + 1 :]) if first + 1 < len(golds) else []
            statuses = statuses[: first + 1] + rest
        return statuses

    def verify_many(self, golds: Iterable[str], completions: Iterable[str]) -> list[Verdict]:
        completions = list(completions)
        predicted = [extract_answer(c) for c in completions]
        return [Verdict(s, p) for s, p in zip(self.verify_answers(golds, predicted), predicted)]
