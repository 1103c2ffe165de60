"""Audit hook that makes "one machine" behave like several for file access (test-only).

tests/cluster.py puts this folder first on PYTHONPATH of every process of a node of the local
two-node Ray cluster (`ray start`, the dashboard/runtime-env agents, every Ray worker, drivers),
so Python imports it at start-up as `sitecustomize`. It reads three variables:

    POLYA_AUDIT_FORBIDDEN  roots (os.pathsep-separated) that belong to *another* node;
                           unset or empty: the hook is not installed at all
    POLYA_AUDIT_NODE       this node's name, for the log ("head", "worker")
    POLYA_AUDIT_LOG        file every process appends violations to

On the audit events "open" (builtins/io.open, io.open_code, os.open), "os.listdir" and
"os.scandir" it makes the path absolute (os.path.abspath: no syscall besides getcwd for
relative ones) and, if it lies under a forbidden root, appends one line

    <node> <pid> <event> <path> <last 3 Python frames as file:line>

to POLYA_AUDIT_LOG and raises PermissionError("node <node>: <path> belongs to another node").
Integer file descriptors are ignored. Roots are compared both as given and with their
symlinks resolved (once, at start-up).

What it does NOT see (so a clean log is necessary, not sufficient, evidence):
- opens done in C/C++/Rust without going through Python's os/io: Arrow (pyarrow.fs, parquet
  readers), safetensors' mmap loader, Rust `tokenizers` (Tokenizer.from_file), torch.load's
  C++ file reader when given a path, vLLM/NCCL native code, and the Ray raylet/GCS themselves;
- os.stat/os.path.exists/os.path.isdir and friends (CPython 3.11 has no audit event for them);
- os.mkdir/os.makedirs, os.rename/os.replace, os.remove/os.unlink, os.rmdir, os.symlink: they
  do have audit events, but this hook only checks the three above (os.walk and shutil.copyfile
  are seen through the os.scandir/open events they raise);
- a path that reaches a forbidden root through a symlink placed elsewhere (the path itself is
  not resolved, to keep the hook cheap);
- subprocesses that are not Python, or Python started with -I/-S or without this PYTHONPATH.

This interpreter (pyenv CPython in .venv) has no sitecustomize of its own; Debian's
/usr/lib/python3.11/sitecustomize.py (only an apport crash hook, not on this interpreter's path)
would be shadowed. To stay harmless anywhere, any other `sitecustomize` found later on sys.path
is still executed after ours (see _chain).
"""
from __future__ import annotations

import os
import sys
import threading

_EVENTS = frozenset({"open", "os.listdir", "os.scandir"})


def _roots(spec: str) -> tuple[str, ...]:
    """Forbidden roots, absolute and with symlinks resolved, each ending in os.sep."""
    roots: set[str] = set()
    for raw in filter(None, spec.split(os.pathsep)):
        for form in (os.path.abspath(raw), os.path.realpath(raw)):
            roots.add(form.rstrip(os.sep) + os.sep)
    return tuple(sorted(roots))


def _short_stack(frame, depth: int = 3) -> str:
    """Last `depth` Python frames as file:line, innermost first, skipping the import machinery's frozen
    frames (an import that scans sys.path shows as the import statement); no file I/O, unlike traceback."""
    out = []
    while frame is not None and len(out) < depth:
        name = frame.f_code.co_filename
        if not name.startswith("<frozen importlib"):
            out.append(f"{name}:{frame.f_lineno}")
        frame = frame.f_back
    return " <- ".join(out) or "<no Python frame>"


def _install(spec: str) -> None:
    roots = _roots(spec)
    node = os.environ.get("POLYA_AUDIT_NODE", "?")
    log = os.environ.get("POLYA_AUDIT_LOG")
    guard = threading.local()
    fspath, abspath, getframe = os.fspath, os.path.abspath, sys._getframe

    def report(event: str, path: str) -> None:
        if not log:
            return
        line = f"{node} {os.getpid()} {event} {path} {_short_stack(getframe(2))}\n"
        with open(log, "a", encoding="utf-8", errors="backslashreplace") as fh:
            fh.write(line)

    def hook(event: str, args: tuple) -> None:
        if event not in _EVENTS or getattr(guard, "busy", False):
            return
        target = args[0] if args else None
        if target is None:
            target = "."  # os.listdir()/os.scandir() without argument: the cwd
        if isinstance(target, int):
            return  # a file descriptor: whoever opened it was audited then
        try:
            path = fspath(target)
            if isinstance(path, bytes):
                path = os.fsdecode(path)
            path = abspath(path)
        except Exception:  # noqa: BLE001 - never let the hook itself break an unrelated call
            return
        probe = path + os.sep
        if not any(probe.startswith(root) for root in roots):
            return
        guard.busy = True
        try:
            report(event, path)
        finally:
            guard.busy = False
        raise PermissionError(f"node {node}: {path} belongs to another node")

    sys.addaudithook(hook)


def _chain() -> None:
    """Run the next `sitecustomize` on sys.path (the one this module shadows), if there is one."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


_spec = os.environ.get("POLYA_AUDIT_FORBIDDEN", "")
if _spec:
    _install(_spec)
del _spec
_chain()
