"""Question sets: the seeded `builtin:arithmetic` generator and jsonl/json/parquet/hub loaders.

A bad row (not a JSON object, invalid JSON, missing field, empty question, unusable answer) is counted and
reported in a `LoadReport`, never fatal: a run over 12,000 questions should not die on row 8,311. A source
that cannot be read at all, or holds no usable question, raises `polya.validation.UserError` (one line
naming the source and the fix).
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from polya.answers import normalize_gold
from polya.spec import QuestionSourceSpec, uri_scheme
from polya.validation import UserError


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


def _level0(rng: random.Random) -> tuple[str, int]:
    """One single-digit sum or difference: what a 135M model answers in about a quarter of its samples (the demo's
    GRPO needs groups with some right and some wrong answers to learn from)."""
    n, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    if rng.random() < 0.5:
        return f"{n} has {a} {item} and gets {b} more. How many {item} does {n} have now?", a + b
    a, b = max(a, b), min(a, b)
    return f"{n} has {a} {item} and gives away {b}. How many {item} does {n} have left?", a - b


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


_LEVELS = {0: _level0, 1: _level1, 2: _level2, 3: _level3}


def arithmetic(n: int, seed: int = 0, difficulty: Iterable[int] = (1, 2)) -> list[Question]:
    """``n`` word problems with exact integer answers; the same (n, seed, difficulty) gives the same list."""
    levels = sorted(set(difficulty))
    bad = [lv for lv in levels if lv not in _LEVELS]
    if bad:
        raise ValueError(f"difficulty levels must be in 0..3, got {bad}")
    out = []
    for i in range(n):
        rng = random.Random(f"{seed}:{i}")  # per-item seeding: question i does not depend on n
        level = levels[i % len(levels)]
        text, answer = _LEVELS[level](rng)
        out.append(Question(id=f"arith-{seed}-{i}", question=text, answer=str(answer), meta={"difficulty": level}))
    return out


# ------------------------------------------------------------------------------ files and hubs
@dataclass(frozen=True)
class _BadRow:
    """A row that could not be read as a JSON object (counted under ``reason``, never fatal)."""

    reason: str


NOT_AN_OBJECT = "row is not an object"


def _json_rows(data: Any, split: str) -> Iterable[Any]:
    """The rows of a whole-file JSON document: a list of objects, or an object holding one under ``split``
    or ``data``; anything else is one bad row."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in (split, "data"):
            if isinstance(data.get(key), list):
                return data[key]
        return [_BadRow(f"top-level object has no {split!r} or 'data' list of rows")]
    return [_BadRow(f"top level is {type(data).__name__}, not a list of objects")]


def _opener(source: str, scheme: str | None):
    if scheme not in (None, "file"):
        import fsspec  # s3://, gs://: the filesystem packages ship in the cluster image

        try:
            return fsspec.open(source, "rb")
        except ImportError as exc:  # fsspec names the package: "Install s3fs to access S3"
            from polya.storage import install_hint

            raise UserError(f"{source}: {install_hint(source, exc)}") from None
    path = Path(source[len("file://"):] if scheme == "file" else source)
    if not path.exists():
        raise FileNotFoundError(f"question file {path} does not exist")
    if path.is_dir():
        raise UserError(f"{source}: is a folder; name a .jsonl, .json or .parquet file")
    return open(path, "rb")


def _read_rows(source: str, split: str) -> Iterable[Any]:
    """Rows of ``source``: dicts, or `_BadRow`s and other values (not objects) that the caller counts."""
    scheme = uri_scheme(source)
    if scheme == "hf":
        try:
            import datasets
        except ImportError:  # present in the cluster image, not in the CPU test set
            raise UserError(f"{source}: hub datasets need the `datasets` package: install it "
                            "(pip install datasets)") from None
        try:
            rows = datasets.load_dataset(source[len("hf://"):], split=split)
        except Exception as exc:  # noqa: BLE001 - unknown name, split, network: the hub's own types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(f"{source}: cannot load the hub dataset (split {split!r}): {first}") from None
        yield from rows  # hub rows are always objects
        return
    name = source.lower()
    try:
        with _opener(source, scheme) as fh:
            if name.endswith(".parquet"):
                import pyarrow as pa
                import pyarrow.parquet as pq

                try:  # one thread: with Arrow's pool, a process reading a Python file object aborts at exit
                    table = pq.read_table(fh, use_threads=False)  # now and then (pyarrow 26); question files are small
                except (pa.ArrowException, OSError) as exc:
                    raise UserError(f"{source}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
                yield from table.to_pylist()  # every row of a table is an object
            elif name.endswith(".json"):
                try:
                    data = json.load(fh)
                except ValueError as exc:  # JSONDecodeError, or bytes that are not UTF-8
                    yield _BadRow(_json_error(exc))
                    return
                yield from _json_rows(data, split)
            else:  # jsonl (optionally .gz)
                if name.endswith(".gz"):
                    import gzip

                    fh = gzip.open(fh)
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        yield json.loads(line)
                    except ValueError as exc:  # JSONDecodeError, or a line that is not UTF-8
                        yield _BadRow(_json_error(exc))
    except (EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError) or getattr(exc, "filename", None):
            raise
        # gzip.BadGzipFile, a truncated .gz, an object store's own error
        raise UserError(f"{source}: cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def _json_error(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON ({exc.msg})"
    return "invalid JSON (not UTF-8 text)"


def _bad_answer(value: Any) -> bool:
    """Cells no gold answer can come from: objects, NaN and infinities."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    return isinstance(value, dict) or (isinstance(value, float) and not math.isfinite(value))


def iter_rows(source: str, split: str) -> Iterable[tuple[dict | None, str | None]]:
    """``(row, None)`` for each object row of ``source``, ``(None, reason)`` for each row that is not one: the
    reader behind `load_questions`, for loaders of other row formats (`polya.benchmarks`)."""
    for row in _read_rows(source, split):
        if isinstance(row, _BadRow):
            yield None, row.reason
        elif not isinstance(row, dict):
            yield None, NOT_AN_OBJECT
        else:
            yield row, None


def load_questions(spec: QuestionSourceSpec) -> tuple[list[Question], LoadReport]:
    """Questions from ``spec`` and a report of the rows that could not be used. Bad rows are counted, never
    fatal; a source without a single usable question raises `UserError` (with the report's summary): no
    stage can do anything with it. A benchmark whose kind is not math (code, choice, or auto: read off its
    file) is loaded by `polya.benchmarks`."""
    if getattr(spec, "kind", "math") != "math":
        from polya.benchmarks import load_benchmark

        return load_benchmark(spec)[1:]
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
        if isinstance(row, _BadRow):
            report.reject(i, row.reason)
            continue
        if not isinstance(row, dict):
            report.reject(i, NOT_AN_OBJECT)
            continue
        q = row.get(spec.questionField)
        if q is not None and not isinstance(q, str):
            report.reject(i, f"{spec.questionField!r} is not text")
            continue
        if not q or not q.strip():
            report.reject(i, f"missing or empty {spec.questionField!r}")
            continue
        cell = row.get(spec.answerField)
        gold = None if _bad_answer(cell) else normalize_gold(cell, spec.answerFormat)
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
    if not out:
        what = report.summary() if report.rows else f"{spec.source}: no rows (an empty file?)"
        raise UserError(f"{what}: no usable question; check the file and questionField "
                        f"({spec.questionField!r}) / answerField ({spec.answerField!r})")
    return out, report
