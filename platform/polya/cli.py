"""The `polya` command: validate, crd, models prepare, heuristics, run, stage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

PROG = "polya"  # the command's name (not the arm of the same name)
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def _cmd_validate(args: argparse.Namespace) -> int:
    from polya.validation import load_manifest, validate_doc

    failed = 0
    for path in args.files:
        try:
            docs = load_manifest(path)
        except (OSError, Exception) as exc:  # yaml errors, missing files
            console.print(f"[red]✗[/] {path}: cannot read: {exc}")
            failed += 1
            continue
        runs = [d for d in docs if not isinstance(d, dict) or d.get("kind", "PolyaRun") == "PolyaRun"]
        if not runs:
            console.print(f"[red]✗[/] {path}: no PolyaRun document found")
            failed += 1
        for i, doc in enumerate(runs):
            run, errors = validate_doc(doc)
            where = path if len(runs) == 1 else f"{path}[{i}]"
            if errors:
                failed += 1
                console.print(f"[red]✗[/] {where}: {len(errors)} error(s)")
                for err in errors:
                    console.print(f"    {err}")
            else:
                assert run is not None
                ids = run.spec.heuristics.selected_ids()
                out.print(f"[green]✓[/] {where}: PolyaRun {run.metadata.name!r} is valid "
                          f"(model {run.spec.model.name}, {len(ids)} heuristics)")
    return 1 if failed else 0


def _cmd_crd(args: argparse.Namespace) -> int:
    from polya import crd

    files = crd.rendered_files() if args.path == str(crd.CRD_PATH) else {Path(args.path): crd.render_crd()}
    targets = list(files)
    text = files[targets[0]]
    if args.check:
        stale = [t for t in targets if not t.exists() or t.read_text() != files[t]]
        for t in stale:
            console.print(f"[red]✗[/] {t} is out of date with platform/polya/spec.py; run `polya crd --write`")
        if not stale:
            out.print(f"[green]✓[/] {', '.join(map(str, targets))} match the models")
        return 1 if stale else 0
    if args.write:
        for target, content in files.items():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            out.print(f"wrote {target}")
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


def _cmd_run(args: argparse.Namespace) -> int:
    from polya.pipeline import run_file

    return run_file(args.file, only=args.only, metrics_port=args.metrics_port, dry_run=args.dry_run)


def _cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from polya.engines.base import EngineConfig
    from polya.models import resolve
    from polya.reward import ScorerConfig
    from polya.serve.launch import start_reward, start_rollout

    cfg = EngineConfig(model=resolve(args.model), kind=args.engine, dtype=args.dtype, max_model_len=args.max_model_len,
                       served_name=args.model, enforce_eager=args.gpus == 0)
    start_rollout(cfg, replicas=args.replicas, gpus_per_replica=args.gpus, http_port=args.port,
                  max_tokens_limit=args.max_tokens_limit, route_prefix="/")
    out.print(f"rollout: http://127.0.0.1:{args.port}/v1 (model {args.model!r}, {args.replicas} replica(s))")
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

    return run_stage_from_file(args.name, args.spec, arm=args.arm)


def build_parser() -> argparse.ArgumentParser:
    from polya.recipe import ARMS, STAGES, Arm

    stages, arms = [str(s) for s in STAGES], [str(a) for a in ARMS]
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check PolyaRun manifests against the spec")
    v.add_argument("files", nargs="+")
    v.set_defaults(func=_cmd_validate)

    c = sub.add_parser("crd", help="print, write or check the generated CRD")
    c.add_argument("--write", action="store_true", help="write it to --path")
    c.add_argument("--check", action="store_true", help="exit 1 if --path differs from the models")
    c.add_argument("--path", default="k8s/crds/polya.dev_polyaruns.yaml")
    c.set_defaults(func=_cmd_crd)

    m = sub.add_parser("models", help="built-in models")
    m.add_argument("action", choices=["prepare", "list"])
    m.set_defaults(func=_cmd_models)

    h = sub.add_parser("heuristics", help="list the Pólya catalogue")
    h.add_argument("--count", type=int, default=64)
    h.set_defaults(func=_cmd_heuristics)

    r = sub.add_parser("run", help="run a PolyaRun's stages on this machine")
    r.add_argument("file")
    r.add_argument("--only", choices=stages, default=None)
    r.add_argument("--metrics-port", type=int, default=None)
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    r.set_defaults(func=_cmd_run)

    sv = sub.add_parser("serve", help="serve a model with the OpenAI API (and /score) until interrupted")
    sv.add_argument("model", help="hub name, path or builtin:smollm2-135m-instruct")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--replicas", type=int, default=1)
    sv.add_argument("--gpus", type=float, default=0, help="GPUs per replica")
    sv.add_argument("--engine", choices=["auto", "vllm", "transformers"], default="auto")
    sv.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                    help="auto: bfloat16 where the hardware computes it natively, else float32")
    sv.add_argument("--max-model-len", type=int, default=2048)
    sv.add_argument("--max-tokens-limit", type=int, default=2048)
    sv.add_argument("--reward", action="store_true", help="also serve the embedding reward model at /score")
    sv.set_defaults(func=_cmd_serve)

    s = sub.add_parser("stage", help="run one stage (what each cluster RayJob runs)")
    s.add_argument("name", choices=stages)
    s.add_argument("--spec", required=True, help="PolyaRun manifest (the operator mounts it from a ConfigMap)")
    s.add_argument("--arm", default=str(Arm.POLYA), choices=arms, help="the arm whose step to run")
    s.set_defaults(func=_cmd_stage)
    return p


def main(argv: list[str] | None = None) -> int:
    from polya.models import ModelNotAvailable
    from polya.storage import StorageError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ModelNotAvailable, StorageError) as exc:  # their messages name the field and the fix
        print(f"polya: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
