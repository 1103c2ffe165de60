"""Question sets: the seeded `builtin:arithmetic` generator and jsonl/json/parquet/hub loaders.

A bad row (missing field, empty question, unusable answer) is counted and reported in a `LoadReport`,
never fatal: a run over 12,000 questions should not die on row 8,311.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from polya.answers import normalize_gold
from polya.spec import QuestionSourceSpec, uri_scheme


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


@dataclass
class LoadReport:
    source: str
    rows: int = 0
    kept: int = 0
    bad: dict[str, int] = field(default_factory=dict)  # reason -> count
    examples: list[str] = field(default_factory=list)  # a few "row N: reason" lines

    def reject(self, row: int, reason: str) -> None:
        self.bad[reason] = self.bad.get(reason, 0) + 1
        if len(self.examples) < 5:
            self.examples.append(f"row {row}: {reason}")

    @property
    def rejected(self) -> int:
        return sum(self.bad.values())

    def summary(self) -> str:
        text = f"{self.source}: {self.kept}/{self.rows} rows kept"
        if self.bad:
            text += " (rejected: " + ", ".join(f"{n} {r}" for r, n in sorted(self.bad.items())) + ")"
        return text


# ------------------------------------------------------------------------------ builtin:arithmetic
_NAMES = ["Ava", "Ben", "Chloe", "Dev", "Elena", "Farid", "Grace", "Hiro", "Iris", "Jonas", "Kemi", "Liam"]
_ITEMS = ["apples", "marbles", "stickers", "books", "pencils", "coins", "cards", "shells", "stamps", "cookies"]
_CONTAINERS = ["boxes", "bags", "jars", "baskets", "crates", "packs"]


def _level1(rng: random.Random) -> tuple[str, int]:
    n, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(5, 60), rng.randint(2, 40)
    if rng.random() < 0.5:
        return f"{n} has {a} {item} and gets {b} more. How many {item} does {n} have now?", a + b
    a, b = max(a, b), min(a, b)
    return f"{n} has {a} {item} and gives away {b}. How many {item} does {n} have left?", a - b


def _level2(rng: random.Random) -> tuple[str, int]:
    n, item, box = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_CONTAINERS)
    k, per, extra = rng.randint(2, 9), rng.randint(3, 12), rng.randint(1, 20)
    if rng.random() < 0.5:
        return (f"{n} buys {k} {box} with {per} {item} in each, and already had {extra} {item}. "
                f"How many {item} does {n} have in total?", k * per + extra)
    total = k * per
    return (f"{n} shares {total} {item} equally among {k} friends, and then gives each friend {extra} more. "
            f"How many {item} does each friend have?", per + extra)


def _level3(rng: random.Random) -> tuple[str, int]:
    n, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    price, k, paid_k = rng.randint(2, 15), rng.randint(3, 12), rng.randint(2, 6)
    budget = price * k + rng.randint(0, price - 1)
    if rng.random() < 0.5:
        return (f"{item.capitalize()} cost {price} dollars each. {n} has {budget} dollars and buys as many "
                f"{item} as possible. How many dollars are left?", budget - price * (budget // price))
    a = rng.randint(10, 40)
    return (f"{n} had some {item}, gave away {paid_k}, then doubled what was left and ended with {2 * a} "
            f"{item}. How many {item} did {n} have at first?", a + paid_k)


_LEVELS = {1: _level1, 2: _level2, 3: _level3}


def arithmetic(n: int, seed: int = 0, difficulty: Iterable[int] = (1, 2)) -> list[Question]:
    """``n`` word problems with exact integer answers; the same (n, seed, difficulty) gives the same list."""
    levels = sorted(set(difficulty))
    bad = [lv for lv in levels if lv not in _LEVELS]
    if bad:
        raise ValueError(f"difficulty levels must be in 1..3, got {bad}")
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")  # per-item seeding: question i does not depend on n
        level = levels[i % len(levels)]
        text, answer = _LEVELS[level](rng)
        out.append(Question(id=f"arith-{seed}-{i}", question=text, answer=str(answer), meta={"difficulty": level}))
    return out


# ------------------------------------------------------------------------------ files and hubs
def _read_rows(source: str, split: str) -> Iterable[dict[str, Any]]:
    scheme = uri_scheme(source)
    if scheme == "hf":
        try:
            import datasets  # noqa: F401  (present in the cluster image, not in the CPU test set)
        except ImportError as exc:
            raise RuntimeError(f"{source}: hub datasets need the `datasets` package") from exc
        import datasets

        yield from datasets.load_dataset(source[len("hf://"):], split=split)
        return
    if scheme not in (None, "file"):
        import fsspec  # s3://, gs://: the filesystem packages ship in the cluster image

        opener = fsspec.open(source, "rb")
    else:
        path = Path(source[len("file://"):] if scheme == "file" else source)
        if not path.exists():
            raise FileNotFoundError(f"question file {path} does not exist")
        opener = open(path, "rb")
    name = source.lower()
    with opener as fh:
        if name.endswith(".parquet"):
            import pyarrow.parquet as pq

            yield from pq.read_table(fh).to_pylist()
        elif name.endswith(".json"):
            data = json.load(fh)
            yield from (data if isinstance(data, list) else data.get(split, data.get("data", [])))
        else:  # jsonl (optionally .gz)
            if name.endswith(".gz"):
                import gzip

                fh = gzip.open(fh)
            for lineno, line in enumerate(fh):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    yield {"__polya_error__": f"invalid JSON ({exc.msg})", "__line__": lineno}


def load_questions(spec: QuestionSourceSpec) -> tuple[list[Question], LoadReport]:
    """Questions from ``spec`` and a report of the rows that could not be used."""
    report = LoadReport(source=spec.source)
    if spec.source.startswith("builtin:"):
        qs = arithmetic(spec.limit or 256, seed=spec.seed, difficulty=spec.difficulty)
        report.rows = report.kept = len(qs)
        return qs, report
    out: list[Question] = []
    seen: set[str] = set()
    for i, row in enumerate(_read_rows(spec.source, spec.split)):
        if spec.limit is not None and len(out) >= spec.limit:
            break
        report.rows += 1
        if "__polya_error__" in row:
            report.reject(i, row["__polya_error__"])
            continue
        q = row.get(spec.questionField)
        if not isinstance(q, str) or not q.strip():
            report.reject(i, f"missing or empty {spec.questionField!r}")
            continue
        gold = normalize_gold(row.get(spec.answerField), spec.answerFormat)
        if gold is None:
            report.reject(i, f"no usable answer in {spec.answerField!r}")
            continue
        qid = str(row.get(spec.idField, i)) if spec.idField else str(i)
        if qid in seen:
            report.reject(i, "duplicate id")
            continue
        seen.add(qid)
        out.append(Question(id=qid, question=q.strip(), answer=gold))
    report.kept = len(out)
    return out, report
