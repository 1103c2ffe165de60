"""The `polya` command: validate, crd, models prepare, heuristics, run, stage."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

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

    text = crd.render_crd()
    target = Path(args.path)
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            console.print(f"[red]✗[/] {target} is out of date with platform/polya/spec.py; run `polya crd --write`")
            return 1
        out.print(f"[green]✓[/] {target} matches the models")
        return 0
    if args.write:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
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

    return run_file(args.file, only=args.only, metrics_port=args.metrics_port)


def _cmd_stage(args: argparse.Namespace) -> int:
    from polya.pipeline import run_stage_from_file

    return run_stage_from_file(args.name, args.spec, arm=args.arm)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="polya", description=__doc__)
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
    r.add_argument("--only", choices=["selfgen", "filter", "midtrain", "grpo", "evaluate"], default=None)
    r.add_argument("--metrics-port", type=int, default=None)
    r.set_defaults(func=_cmd_run)

    s = sub.add_parser("stage", help="run one stage (what each cluster RayJob runs)")
    s.add_argument("name", choices=["selfgen", "filter", "midtrain", "grpo", "evaluate"])
    s.add_argument("--spec", required=True, help="PolyaRun manifest (the operator mounts it from a ConfigMap)")
    s.add_argument("--arm", default="polya", help="polya, vanilla or star")
    s.set_defaults(func=_cmd_stage)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
