"""The `polya` command: validate, crd, models, heuristics, run, serve, stage.

Errors. A mistake in what the user gave — a missing or unreadable file, bad YAML, an invalid spec field, an
unknown model, unreachable or unauthorised storage, a missing optional package, a bad command-line argument
or value — is printed on stderr as one line per problem that names the file or field and the fix, and the
command exits with 1 (argparse's usage errors too: its own code, 2, is normalised to 1). `-v`/`--verbose`
(or `POLYA_VERBOSE=1` in the environment, e.g. a stage pod's) prints the traceback as well. Anything else
is a bug or a failure nobody anticipated: it keeps Python's traceback (exit code 1); please report it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from polya.spec import ModelSpec, PolyaRun, QuestionSourceSpec

PROG = "polya"  # the command's name (not the arm of the same name)
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------------- validate
def _cmd_validate(args: argparse.Namespace) -> int:
    from polya.validation import SpecError, load_manifest, run_documents, sweep_documents, validate_doc

    failed = 0
    for path in args.files:
        try:
            docs = load_manifest(path)
        except SpecError as exc:
            for line in exc.lines:
                console.print(f"[red]✗[/] {escape(line)}")
            failed += 1
            continue
        runs, sweeps = run_documents(docs), sweep_documents(docs)
        if not runs and not sweeps:
            console.print(f"[red]✗[/] {escape(path)}: no PolyaRun or PolyaSweep document found"
                          + (" (the file is empty)" if not docs else " (check kind: PolyaRun or PolyaSweep)"))
            failed += 1
        for i, doc in enumerate(sweeps):
            failed += not _validate_sweep(doc, path if len(sweeps) == 1 else f"{path}[sweep {i}]", args)
        for i, doc in enumerate(runs):
            run, errors = validate_doc(doc)
            where = path if len(runs) == 1 else f"{path}[{i}]"
            if errors:
                failed += 1
                for err in errors:  # one line per problem, each naming the file and the field
                    console.print(f"[red]✗[/] {escape(where)}: {escape(str(err))}")
                continue
            assert run is not None
            ids = run.spec.heuristics.selected_ids()
            out.print(f"[green]✓[/] {escape(where)}: PolyaRun {escape(repr(run.metadata.name))} is valid "
                      f"(model {escape(run.spec.model.name)}, {len(ids)} heuristics)")
            if not args.no_prompt_check:
                for warning in prompt_warnings(run):
                    console.print(f"[yellow]![/] {escape(where)}: warning: {escape(warning)}")
    return 1 if failed else 0


def _validate_sweep(doc: dict, where: str, args: argparse.Namespace) -> bool:
    """One PolyaSweep document: its errors (an arm's override named ``spec.arms[i].set.<path>``), or a line
    saying what it expands to and the prompt warnings of each arm's child."""
    from polya.sweep import children
    from polya.validation import validate_sweep_doc

    sweep, errors = validate_sweep_doc(doc)
    for err in errors:
        console.print(f"[red]✗[/] {escape(where)}: {escape(str(err))}")
    if errors:
        return False
    kids = children(sweep)
    out.print(f"[green]✓[/] {escape(where)}: PolyaSweep {escape(repr(sweep.metadata.name))} is valid "
              f"({len(sweep.spec.arms)} arms x {len(sweep.spec.seeds)} seeds = {len(kids)} PolyaRuns)")
    if not args.no_prompt_check:
        said: set[str] = set()
        for child in kids[:: len(sweep.spec.seeds)]:  # one child per arm: the seed changes no prompt
            for warning in prompt_warnings(child):
                if warning not in said:
                    said.add(warning)
                    console.print(f"[yellow]![/] {escape(where)}: {escape(child.metadata.name)}: warning: "
                                  f"{escape(warning)}")
    return True


class FastTokenizer:
    """A model folder's ``tokenizer.json`` and chat template, without torch: prompts are rendered by the
    renderer `apply_chat_template` itself calls (transformers' jinja renderer, with the folder's special
    tokens) and counted as the engines count them (no special tokens added)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        template: Any = config.get("chat_template")
        if (folder / "chat_template.jinja").is_file():
            template = (folder / "chat_template.jinja").read_text()
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self._special = {}
        for key in ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                self._special[key] = value

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = True) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template(conversations=[messages], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **self._special)
        return rendered[0]

    def count(self, texts: list[str]) -> list[int]:
        return [len(e.ids) for e in self._tok.encode_batch(texts, add_special_tokens=False)]


def local_tokenizer(model: "ModelSpec") -> FastTokenizer | None:
    """The tokenizer of ``model`` where it is on this machine without any download: a built-in model once
    prepared (`polya models prepare`), or a local folder with a ``tokenizer.json``; else None."""
    from polya.models import builtin_model_dir
    from polya.spec import uri_scheme
    from polya.storage import local_path

    scheme = uri_scheme(model.name)
    if scheme == "builtin":
        folder = builtin_model_dir(model.name.split(":", 1)[1])
    elif scheme in (None, "file") and local_path(model.name).is_dir():
        folder = local_path(model.name)
    else:
        return None  # a hub name or a storage URI: not looked up by `polya validate`
    if not (folder / "tokenizer.json").is_file():
        return None
    return FastTokenizer(folder)


#: the longest questions (by their own tokens) whose rendered prompts are measured
_LONGEST = 8


def _readable_tokenizer(model: "ModelSpec") -> tuple[FastTokenizer | None, list[str]]:
    """`local_tokenizer`, or None and a warning where its files cannot be read (nothing is measured then)."""
    try:
        return local_tokenizer(model), []
    except Exception as exc:  # noqa: BLE001 - an unreadable tokenizer.json: say so, measure nothing
        return None, [f"spec.model.name: the model's tokenizer could not be read ({type(exc).__name__}: "
                      f"{' '.join(str(exc).split())[:200]}); prompts were not measured"]


def _longest_prompt(tok, questions: list, heads: list, few_shot: bool) -> tuple[int, str, object]:
    """(tokens, question id, heuristic) of the longest prompt the stage would render, among the
    `_LONGEST` longest questions."""
    from polya.heuristics import render_prompt

    lengths = tok.count([q.question for q in questions])
    best = (0, "", None)
    for j in sorted(range(len(questions)), key=lambda j: -lengths[j])[:_LONGEST]:
        for h in heads:
            n = tok.count([render_prompt(tok, questions[j].question, h, few_shot=few_shot)])[0]
            if n > best[0]:
                best = (n, questions[j].id, h)
    return best


def _prompt_checks(spec) -> list[tuple[str, str, str, "QuestionSourceSpec", list, int, str]]:
    """(block, label, field, question source, heuristics, maxTokens, model field) of every stage's prompts."""
    from polya.heuristics import select
    from polya.recipe import Arm

    heuristics = list(select(spec.heuristics.count, spec.heuristics.names))
    writer = "selfGeneration.model" if spec.selfGeneration.model else "model"  # whose tokenizer renders the prompts
    rl_field = "grpo.dataset" if spec.grpo.dataset else "dataset"
    checks: list[tuple[str, str, str, "QuestionSourceSpec", list, int, str]] = [
        ("selfGeneration", "dataset", "dataset", spec.dataset,  # STaR generates without a heuristic
         heuristics + ([None] if Arm.STAR in spec.baselines else []), spec.selfGeneration.maxTokens, writer)]
    if spec.grpo.enabled:
        checks.append(("grpo.rollout", rl_field, rl_field, spec.rl_dataset(), [None], spec.grpo.rollout.maxTokens,
                       "model"))
    for i, bench in enumerate(spec.evaluation.benchmarks):
        checks.append(("evaluation", f"benchmark {bench.name!r}", f"evaluation.benchmarks[{i}]", bench, [None],
                       spec.evaluation.maxTokens, "model"))
    return checks


def prompt_warnings(run: "PolyaRun") -> list[str]:
    """`polya validate`'s warnings: local question files that cannot be loaded (missing, unreadable, no usable
    question: the run would fail there), and each stage whose longest prompt, from a local question file or
    builtin:arithmetic rendered as the stage renders it (`polya.heuristics.render_prompt` with the model's
    tokenizer), would not fit beside its maxTokens in model.maxModelLen. Prompts are measured only where the
    model's tokenizer is on this machine (a prepared built-in model, a local folder): nothing is downloaded."""
    from polya.data import load_questions
    from polya.models import ModelNotAvailable
    from polya.spec import uri_scheme
    from polya.storage import StorageError
    from polya.validation import UserError

    spec = run.spec
    checks = _prompt_checks(spec)
    models = {"model": spec.model, "selfGeneration.model": spec.generator()}
    warnings, loaded, toks = [], {}, {}
    for block, label, field, source, heads, max_tokens, model_field in checks:
        if source.source != "builtin:arithmetic" and uri_scheme(source.source) not in (None, "file"):
            continue  # hub and object-store sources are read where the run runs
        if model_field not in toks:
            toks[model_field], bad = _readable_tokenizer(models[model_field])
            warnings += [w.replace("spec.model.name", f"spec.{model_field}.name") for w in bad]
        key = field
        if key not in loaded:
            try:
                loaded[key] = load_questions(source)[0]
            except (UserError, OSError, StorageError, ModelNotAvailable) as exc:
                loaded[key] = None
                warnings.append(f"spec.{field}.source: {' '.join(str(exc).split())}")
        questions, tok = loaded[key], toks[model_field]
        if not questions or tok is None:
            continue
        try:
            best = _longest_prompt(tok, questions, heads, spec.heuristics.fewShot)
        except Exception as exc:  # noqa: BLE001 - a broken tokenizer or chat template: a warning, not a crash
            warnings.append(f"spec.{model_field}.name: prompts of the {label} could not be measured with the model's "
                            f"tokenizer ({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); the engines "
                            f"will load the same files: check tokenizer.json / the chat template")
            toks[model_field] = None
            continue
        n, qid, h = best
        limit = models[model_field].maxModelLen
        if n + max_tokens > limit:
            which = f"question {qid}" + (f", heuristic {h.id}" if h is not None else "")
            fix = (f"lower it to <= {limit - n}, or raise spec.{model_field}.maxModelLen to >= {n + max_tokens}"
                   if limit > n else f"raise spec.{model_field}.maxModelLen to >= {n + max_tokens}")
            warnings.append(f"spec.{block}.maxTokens: the longest prompt of the {label} ({source.source}, {which}) "
                            f"is {n} tokens, and with maxTokens {max_tokens} needs {n + max_tokens} > "
                            f"{model_field}.maxModelLen ({limit}): the engines refuse such requests; {fix}")
    return warnings


# ----------------------------------------------------------------------------------------- other commands
def _cmd_crd(args: argparse.Namespace) -> int:
    from polya import crd

    files = crd.rendered_files() if args.path == str(crd.CRD_PATH) else {Path(args.path): crd.render_crd()}
    targets = list(files)
    text = files[targets[0]]
    if args.check:
        stale = [t for t in targets if not t.exists() or t.read_text() != files[t]]
        for t in stale:
            console.print(f"[red]✗[/] {escape(str(t))} is out of date with platform/polya/spec.py; run `polya crd --write`")
        if not stale:
            out.print(f"[green]✓[/] {escape(', '.join(map(str, targets)))} match the models")
        return 1 if stale else 0
    if args.write:
        for target, content in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            out.print(f"wrote {escape(str(target))}")
        return 0
    sys.stdout.write(text)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from polya import models

    if args.action == "prepare":
        models.prepare_all()
        return 0
    for name in ("smollm2-135m-instruct", "all-minilm-l6-v2"):
        out.print(f"builtin:{name}")
    return 0


def _cmd_heuristics(args: argparse.Namespace) -> int:
    from rich.table import Table

    from polya.heuristics import CATALOGUE

    table = Table("#", "id", "name", "description", show_lines=False)
    for i, h in enumerate(CATALOGUE[: args.count], start=1):
        table.add_row(str(i), h.id, h.name, h.description)
    out.print(table)
    return 0


def check_inputs(run: "PolyaRun", path: str, reads: set[str] | None = None) -> None:
    """Before a run or a stage starts (Ray, engines): every URI field's storage backend imports (s3fs, gcsfs,
    adlfs), and the local question files it reads (``reads``: 'dataset', 'evaluation'; None: both) exist and
    hold usable questions (loaded as the stages load them: bad rows are counted, not fatal; a file without a
    usable question is). Raises `UserError` with one line per problem, naming the file and the field."""
    from polya import storage
    from polya.data import load_questions
    from polya.spec import uri_scheme
    from polya.validation import UserError

    spec = run.spec
    sources = [("dataset.source", spec.dataset, "dataset")]
    if spec.grpo.dataset is not None:
        sources.append(("grpo.dataset.source", spec.grpo.dataset, "dataset"))
    sources += [(f"evaluation.benchmarks[{i}].source", b, "evaluation") for i, b in enumerate(spec.evaluation.benchmarks)]
    uris = [("storage.uri", spec.storage.uri), ("model.name", spec.model.name)]
    if spec.storage.artifacts:
        uris.append(("storage.artifacts", spec.storage.artifacts))
    if spec.selfGeneration.model is not None:
        uris.append(("selfGeneration.model.name", spec.selfGeneration.model.name))
    if spec.filtering.rewardModel.name:
        uris.append(("filtering.rewardModel.name", spec.filtering.rewardModel.name))
    uris += [(field, source.source) for field, source, _ in sources]
    problems = []
    for field, uri in uris:
        if storage.backend_missing(uri):
            problems.append(f"{path}: spec.{field}: {uri}: {storage.install_hint(uri)}")
    for field, source, reader in sources:
        if (reads is not None and reader not in reads) or uri_scheme(source.source) not in (None, "file"):
            continue  # builtin:, hf:// and object stores are read by the stages themselves
        if not storage.local_path(source.source).is_file():
            problems.append(f"{path}: spec.{field}: no such file {source.source} (fix the path, or use "
                            "builtin:arithmetic)")
            continue
        try:
            load_questions(source)
        except (UserError, OSError) as exc:
            problems.append(f"{path}: spec.{field}: {' '.join(str(exc).split())}")
    if problems:
        raise UserError("\n".join(problems))


def _preflight(run: "PolyaRun", path: str, only: str | None = None) -> None:
    from polya.preflight import problems
    from polya.validation import UserError

    found = problems(run, only)
    if found:
        raise UserError("\n".join(f"{path}: spec.{line}" if line.split(":")[0].replace(".", "").isalnum()
                                  else f"{path}: {line}" for line in found))


def _cmd_run(args: argparse.Namespace) -> int:
    from polya.pipeline import run_file
    from polya.validation import load_run_file

    run = load_run_file(args.file)  # SpecError: one line per problem
    check_inputs(run, args.file)
    if not args.dry_run:
        _preflight(run, args.file, args.only)  # before the plan is printed: a run that cannot start says why in one line
    return run_file(args.file, only=args.only, metrics_port=args.metrics_port, dry_run=args.dry_run)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from polya.sweep_run import run_sweep
    from polya.validation import load_sweep_file

    sweep = load_sweep_file(args.file)  # SpecError: one line per problem
    return run_sweep(sweep, args.file, dry_run=args.dry_run, verbose=bool(getattr(args, "verbose", False)))


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from polya.models import resolve

    model = resolve(args.model, field="polya serve MODEL")  # before Ray starts: a bad name fails at once
    from polya.engines.base import EngineConfig
    from polya.reward import ScorerConfig
    from polya.serve.launch import start_reward, start_rollout

    cfg = EngineConfig(model=model, kind=args.engine, dtype=args.dtype, max_model_len=args.max_model_len,
                       served_name=args.model, enforce_eager=args.gpus == 0)
    start_rollout(cfg, replicas=args.replicas, gpus_per_replica=args.gpus, http_port=args.port,
                  max_tokens_limit=args.max_tokens_limit, route_prefix="/")
    out.print(f"rollout: http://127.0.0.1:{args.port}/v1 (model {escape(repr(args.model))}, {args.replicas} replica(s))")
    if args.reward:
        start_reward(ScorerConfig(), http_port=args.port)
        out.print(f"reward model: POST http://127.0.0.1:{args.port}/score")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from polya.pipeline import run_stage_from_file
    from polya.validation import load_run_file

    from polya.recipe import Stage

    run = load_run_file(args.spec)
    reads = {Stage.EVALUATE: {"evaluation"}, Stage.SELFGEN: {"dataset"}, Stage.GRPO: {"dataset"}}
    check_inputs(run, args.spec, reads.get(Stage(args.name), set()))
    return run_stage_from_file(args.name, args.spec, arm=args.arm)


# ------------------------------------------------------------------------------------------------ parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit code 1 (the code of every expected error of `polya`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _number(kind: Callable[[str], Any], low: float | None = None, high: float | None = None) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` within [low, high]."""
    noun = "an integer" if kind is int else "a number"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {noun}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"expected {noun} {span}, got {text}")
        return value

    return parse


PORT = _number(int, 1, 65535)


def _serve_arguments(sv: argparse.ArgumentParser) -> None:
    sv.add_argument("model", help="hub name, path or builtin:smollm2-135m-instruct")
    sv.add_argument("--port", type=PORT, default=8000)
    sv.add_argument("--replicas", type=_number(int, 1), default=1)
    sv.add_argument("--gpus", type=_number(float, 0), default=0, help="GPUs per replica")
    sv.add_argument("--engine", choices=["auto", "vllm", "transformers"], default="auto")
    sv.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto: bfloat16 where the hardware computes it natively, else float32")
    sv.add_argument("--max-model-len", type=_number(int, 1), default=2048)
    sv.add_argument("--max-tokens-limit", type=_number(int, 1), default=2048)
    sv.add_argument("--reward", action="store_true", help="also serve the embedding reward model at /score")
    sv.set_defaults(func=_cmd_serve)


def build_parser() -> argparse.ArgumentParser:
    from polya.recipe import ARMS, STAGES, Arm

    stages, arms = [str(s) for s in STAGES], [str(a) for a in ARMS]
    verbose = _Parser(add_help=False)  # accepted before and after the subcommand
    verbose.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                         help="print the traceback of an error (also POLYA_VERBOSE=1)")
    p = _Parser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", default=False,
                   help="print the traceback of an error (also POLYA_VERBOSE=1)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[verbose], **kw)

    v = command("validate", help="check PolyaRun and PolyaSweep manifests against the spec")
    v.add_argument("files", nargs="+")
    v.add_argument("--no-prompt-check", action="store_true",
                   help="skip measuring the prompts of local datasets against model.maxModelLen")
    v.set_defaults(func=_cmd_validate)

    c = command("crd", help="print, write or check the generated CRD")
    mode = c.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write it to --path")
    mode.add_argument("--check", action="store_true", help="exit 1 if --path differs from the models")
    c.add_argument("--path", default="k8s/crds/polya.dev_polyaruns.yaml")
    c.set_defaults(func=_cmd_crd)

    m = command("models", help="built-in models")
    m.add_argument("action", choices=["prepare", "list"])
    m.set_defaults(func=_cmd_models)

    h = command("heuristics", help="list the Pólya catalogue")
    h.add_argument("--count", type=_number(int, 1, 64), default=64)
    h.set_defaults(func=_cmd_heuristics)

    r = command("run", help="run a PolyaRun's stages on this machine")
    r.add_argument("file")
    r.add_argument("--only", choices=stages, default=None)
    r.add_argument("--metrics-port", type=PORT, default=None)
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    r.set_defaults(func=_cmd_run)

    w = command("sweep", help="run a PolyaSweep's child runs on this machine, then its report")
    w.add_argument("file")
    w.add_argument("--dry-run", action="store_true", help="print the child runs and exit")
    w.set_defaults(func=_cmd_sweep)

    _serve_arguments(command("serve", help="serve a model with the OpenAI API (and /score) until interrupted"))

    s = command("stage", help="run one stage (what each cluster RayJob runs)")
    s.add_argument("name", choices=stages)
    s.add_argument("--spec", required=True, help="PolyaRun manifest (the operator mounts it from a ConfigMap)")
    s.add_argument("--arm", default=str(Arm.POLYA), choices=arms, help="the arm whose step to run")
    s.set_defaults(func=_cmd_stage)
    return p


# -------------------------------------------------------------------------------------------------- main
#: packages of the data plane: missing ones mean polya was installed without its cpu or gpu extra
_DATA_PLANE = {"torch", "ray", "vllm", "transformers", "tokenizers", "deepspeed", "datasets", "pyarrow", "numpy",
               "math_verify", "accelerate", "safetensors", "sentence_transformers", "huggingface_hub", "gguf"}


def expected_error(exc: BaseException) -> list[str] | None:
    """The lines `polya` prints for an expected error (a mistake in what the user gave, or the environment),
    None for anything else (a bug: its traceback is kept)."""
    from polya.models import ModelNotAvailable
    from polya.storage import StorageError, install_hint
    from polya.validation import UserError

    def one_line(text: str) -> str:
        return " ".join(text.split())

    if isinstance(exc, UserError):
        return exc.lines
    if isinstance(exc, (ModelNotAvailable, StorageError)):  # their messages name the field and the fix
        return [one_line(line) for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
    if isinstance(exc, ModuleNotFoundError) and exc.name and not exc.name.startswith("polya"):
        top = exc.name.split(".")[0]
        backends = {"s3fs": "s3://x", "gcsfs": "gs://x", "adlfs": "az://x"}
        if top in backends:
            return [install_hint(backends[top])]
        if top in _DATA_PLANE:
            return [f"this command needs the {top} package (the data plane), which is not installed: install "
                    "polya with its cpu or gpu extra (pip install 'polya[cpu]'; `make setup`)"]
        return [f"the {top} package is not installed: install it (pip install {top})"]
    if isinstance(exc, OSError):
        if exc.filename is not None and exc.strerror:
            return [one_line(f"{exc.filename}: {exc.strerror}")]
        return [one_line(str(exc)) or type(exc).__name__]
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False)) or os.environ.get("POLYA_VERBOSE", "") not in ("", "0")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("polya: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        lines = expected_error(exc)
        if lines is None:
            raise  # a bug or an unanticipated failure: Python prints its traceback, the exit code is 1
        if verbose:
            traceback.print_exc()
        for line in lines:
            print(f"{PROG}: {line}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
