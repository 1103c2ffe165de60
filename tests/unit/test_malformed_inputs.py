"""Bad input never tracebacks: a corpus of malformed spec files, question files and command lines, each fed to
the real `polya` entry point in a subprocess. Every case must end with exit code 1 (argparse's usage errors
included: the CLI normalises its 2 to 1), exactly one line on stderr that names the file or the field, and no
traceback. The subprocesses run in parallel (~10 s on 2 cores)."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import yaml

from conftest import EXAMPLES, REPO

#: the console script pyproject.toml installs (`polya = "polya.cli:main"`), else the module
ENTRY = [str(Path(sys.executable).parent / "polya")] if (Path(sys.executable).parent / "polya").exists() \
    else [sys.executable, "-m", "polya.cli"]


@dataclass
class Case:
    id: str
    args: list[str]  # "{d}" is replaced by the case folder
    names: str  # what the one stderr line must name (a file or a field path; "{d}" as above)
    setup: Callable[[Path], None] = lambda d: None
    env: dict[str, str] = field(default_factory=dict)


def _local() -> dict:
    return yaml.safe_load((EXAMPLES / "polya-run-local.yaml").read_text())


def spec_file(name: str, mutate: Callable[[dict], None]) -> Callable[[Path], None]:
    """Write the embedded example, changed by ``mutate`` (on its spec), to ``name``."""
    def setup(d: Path) -> None:
        doc = copy.deepcopy(_local())
        mutate(doc["spec"])
        (d / name).write_text(yaml.safe_dump(doc))
    return setup


def text_file(name: str, content: str | bytes) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def dataset_run(data_name: str, content: str | bytes | Callable[[Path], None], **fields) -> Callable[[Path], None]:
    """A question file ``data_name`` and run.yaml whose dataset reads it (``fields``: its field mapping)."""
    def setup(d: Path) -> None:
        if callable(content):
            content(d / data_name)
        else:
            text_file(data_name, content)(d)
        spec_file("run.yaml", lambda s: s["dataset"].update(source=str(d / data_name), limit=None, **fields))(d)
    return setup


def parquet_with_wrong_types(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"problem": [1, 2, 3], "answer": [[1.5], [2.5], [3.5]]}), path)


def shadow_s3fs(d: Path) -> None:
    """A folder that, first on PYTHONPATH, makes `import s3fs` fail as if it were not installed."""
    (d / "no_s3fs" / "s3fs").mkdir(parents=True)
    (d / "no_s3fs" / "s3fs" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 's3fs'\", name='s3fs')\n")
    spec_file("s3.yaml", lambda s: s["storage"].update(uri="s3://polya-no-such-bucket/run"))(d)


def budget_too_big(s: dict) -> None:
    s["evaluation"]["maxTokens"] = s["model"]["maxModelLen"]


#: an S3 API that nothing listens on, and botocore told not to retry
UNREACHABLE_S3 = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y",
                  "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard", "AWS_EC2_METADATA_DISABLED": "true"}

CORPUS = [
    # ---- spec files
    Case("yaml-syntax", ["validate", "{d}/bad.yaml"], "{d}/bad.yaml: not valid YAML at line 2",
         text_file("bad.yaml", "spec: [unclosed\n")),
    Case("yaml-syntax-run", ["run", "{d}/bad.yaml"], "{d}/bad.yaml: not valid YAML", text_file("bad.yaml", "a: b: c\n")),
    Case("list-not-mapping", ["run", "{d}/list.yaml"], "{d}/list.yaml: (root)", text_file("list.yaml", "- a\n- b\n")),
    Case("unknown-field", ["validate", "{d}/s.yaml"], "spec.grpo.grupSize",
         spec_file("s.yaml", lambda s: s["grpo"].update(grupSize=4))),
    Case("wrong-type", ["run", "--dry-run", "{d}/s.yaml"], "spec.grpo.steps",
         spec_file("s.yaml", lambda s: s["grpo"].update(steps="many"))),
    Case("missing-required", ["validate", "{d}/s.yaml"], "spec.storage", spec_file("s.yaml", lambda s: s.pop("storage"))),
    Case("max-tokens-too-big", ["validate", "{d}/s.yaml"], "spec.evaluation.maxTokens", spec_file("s.yaml", budget_too_big)),
    Case("max-tokens-too-big-run", ["run", "--dry-run", "{d}/s.yaml"], "spec.evaluation.maxTokens",
         spec_file("s.yaml", budget_too_big)),
    Case("missing-file", ["run", "{d}/nope.yaml"], "{d}/nope.yaml"),
    Case("missing-file-validate", ["validate", "{d}/nope.yaml"], "{d}/nope.yaml"),
    Case("empty-file", ["validate", "{d}/empty.yaml"], "{d}/empty.yaml", text_file("empty.yaml", "")),
    Case("empty-file-run", ["run", "{d}/empty.yaml"], "{d}/empty.yaml", text_file("empty.yaml", "")),
    Case("binary-garbage", ["validate", "{d}/bin.yaml"], "{d}/bin.yaml", text_file("bin.yaml", bytes(range(256)) * 4)),
    Case("control-character", ["run", "{d}/nul.yaml"], "{d}/nul.yaml", text_file("nul.yaml", "a\x00: 1\n")),
    Case("folder-not-file", ["validate", "{d}"], "{d}"),
    Case("two-runs", ["run", "{d}/two.yaml"], "{d}/two.yaml",
         text_file("two.yaml", yaml.safe_dump_all([_local(), _local()]))),
    Case("stage-bad-spec", ["stage", "selfgen", "--spec", "{d}/s.yaml"], "spec.heuristics.count",
         spec_file("s.yaml", lambda s: s["heuristics"].update(count=65))),
    # ---- question files (loaded before a run starts)
    Case("rows-not-objects", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.jsonl", '42\n[1]\n"x"\nnull\n')),
    Case("invalid-json-lines", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.jsonl", "{not json\n{\"problem\": \n")),
    Case("empty-question-file", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source", dataset_run("q.jsonl", "")),
    Case("wrong-columns", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.jsonl", json.dumps({"q": "1+1?", "a": "2"}) + "\n")),
    Case("parquet-wrong-types", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.parquet", parquet_with_wrong_types)),
    Case("parquet-corrupt", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.parquet", b"PAR1 not really")),
    Case("json-top-level-scalar", ["run", "--dry-run", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.json", "42")),
    Case("binary-question-file", ["stage", "selfgen", "--spec", "{d}/run.yaml"], "spec.dataset.source",
         dataset_run("q.jsonl", b"\xff\xfe\x00\x01\n\x80\x81\n")),
    Case("missing-question-file", ["run", "--dry-run", "{d}/s.yaml"], "spec.dataset.source",
         spec_file("s.yaml", lambda s: s["dataset"].update(source="/nonexistent/q.jsonl"))),
    # ---- command lines
    Case("unknown-subcommand", ["frobnicate"], "frobnicate"),
    Case("unknown-flag", ["validate", "--frobnicate", str(EXAMPLES / "polya-run-local.yaml")], "--frobnicate"),
    Case("missing-argument", ["run"], "file"),
    Case("bad-count", ["heuristics", "--count", "0"], "--count"),
    Case("bad-port", ["serve", "builtin:smollm2-135m-instruct", "--port", "99999"], "--port"),
    Case("unknown-models-action", ["models", "frobnicate"], "frobnicate"),
    Case("unknown-stage", ["stage", "frobnicate", "--spec", str(EXAMPLES / "polya-run-local.yaml")], "frobnicate"),
    Case("crd-write-and-check", ["crd", "--write", "--check"], "--check"),
    Case("crd-unwritable-path", ["crd", "--write", "--path", "{d}/afile/crd.yaml"], "{d}/afile",
         text_file("afile", "a file, not a folder")),
    Case("serve-no-such-model", ["serve", "{d}/no-such-model"], "polya serve MODEL"),
    Case("run-no-such-local-model", ["run", "{d}/s.yaml"], "spec.model.name",
         spec_file("s.yaml", lambda s: s["model"].update(name="./no-such-model-folder"))),
    Case("run-unknown-hub-model", ["run", "{d}/s.yaml"], "spec.model.name",
         spec_file("s.yaml", lambda s: s["model"].update(name="no-such-org/no-such-model")),
         env={"HF_HUB_OFFLINE": "1"}),
    # ---- storage
    Case("s3-unreachable", ["run", "{d}/s3.yaml"], "spec.storage.uri",
         spec_file("s3.yaml", lambda s: s["storage"].update(uri="s3://polya-no-such-bucket/run")), env=UNREACHABLE_S3),
    Case("s3fs-missing", ["run", "--dry-run", "{d}/s3.yaml"], "spec.storage.uri", shadow_s3fs,
         env={"PYTHONPATH": "{d}/no_s3fs"}),
    Case("artifacts-unreachable", ["run", "{d}/s3.yaml"], "storage.artifacts",  # results local, stage outputs not
         spec_file("s3.yaml", lambda s: s["storage"].update(artifacts="s3://polya-no-such-bucket/shared")),
         env=UNREACHABLE_S3),
]


def _run(case: Case, root: Path) -> tuple[Case, Path, subprocess.CompletedProcess]:
    d = root / case.id
    d.mkdir()
    case.setup(d)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "POLYA_VERBOSE": "",
           "COLUMNS": "300", **{k: v.replace("{d}", str(d)) for k, v in case.env.items()}}
    if "PYTHONPATH" in case.env and os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] += os.pathsep + os.environ["PYTHONPATH"]
    args = [a.replace("{d}", str(d)) for a in case.args]
    res = subprocess.run(ENTRY + args, capture_output=True, text=True, cwd=d, env=env, timeout=120)
    return case, d, res


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Case, Path, subprocess.CompletedProcess]]:
    root = tmp_path_factory.mktemp("malformed")
    with ThreadPoolExecutor(max_workers=4) as pool:
        done = list(pool.map(lambda c: _run(c, root), CORPUS))
    return {case.id: (case, d, res) for case, d, res in done}


def test_the_corpus_is_large_and_distinct():
    assert len(CORPUS) >= 20
    assert len({c.id for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case_id", [c.id for c in CORPUS])
def test_malformed_input_is_one_line_and_exit_1(results, case_id):
    case, d, res = results[case_id]
    shown = f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    assert "Traceback" not in res.stderr + res.stdout, shown
    assert res.returncode == 1, shown
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, shown
    assert case.names.replace("{d}", str(d)) in lines[0], shown


def test_verbose_shows_the_traceback(tmp_path):
    """-v (before or after the subcommand) and POLYA_VERBOSE=1 add the traceback to the same one-line message."""
    missing = str(tmp_path / "nope.yaml")
    for args, env in ((["-v", "run", missing], {}), (["run", "-v", missing], {}), (["run", missing], {"POLYA_VERBOSE": "1"})):
        res = subprocess.run(ENTRY + args, capture_output=True, text=True, cwd=REPO, env={**os.environ, **env})
        assert res.returncode == 1 and "Traceback" in res.stderr, res.stderr
        assert res.stderr.rstrip().splitlines()[-1] == f"polya: {missing}: no such file (check the path)"


def test_rows_that_are_not_objects_do_not_stop_a_run(tmp_path):
    """A question file with some bad rows passes the pre-run check: bad rows are counted, not fatal."""
    data = tmp_path / "q.jsonl"
    data.write_text('42\n[1]\n"x"\nnull\n{bad\n' + json.dumps({"problem": "1+1?", "answer": "2"}) + "\n")
    spec_file("run.yaml", lambda s: s["dataset"].update(source=str(data), limit=None))(tmp_path)
    res = subprocess.run(ENTRY + ["run", "--dry-run", str(tmp_path / "run.yaml")], capture_output=True, text=True,
                         cwd=REPO)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
