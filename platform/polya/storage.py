"""Storage URIs across processes: what a process reads it fetches into its own node-local cache, what it
writes it uploads; only URIs cross a process boundary.

A run's storage is a local path (embedded runs; a volume mounted at the same path on every pod, which
``file://`` also names) or an object store (``s3://``, ``gs://``, ``az://``: fsspec, credentials from the
environment). On local storage every function works in place. On an object store:

* `fetch(uri)` downloads the tree under ``uri`` once per node into ``$POLYA_CACHE/storage/<hash>/``
  (under a file lock, so the processes of one node share one copy) and checks every file's size against
  the listing and, where the artifact's manifest records it, its sha256;
* `local_dir(uri)` is where this node's processes write files for ``uri`` (apart from the fetched copies),
  and `push` uploads them with their sizes and hashes in a part file (``.parts/<id>.json``) that the
  manifest is later built from.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Iterator

from polya.spec import uri_scheme

MANIFEST = "manifest.json"
PARTS = ".parts"
COMPLETE = ".polya-complete"


class StorageError(RuntimeError):
    """Storage that cannot be reached or holds nothing at the URI (the message names what to fix)."""


def cache_root() -> Path:
    """This node's cache (``$POLYA_CACHE``, default ``~/.cache/polya``): built-in models, fetched trees."""
    return Path(os.environ.get("POLYA_CACHE", Path.home() / ".cache" / "polya"))


def is_remote(uri: str) -> bool:
    return uri_scheme(uri) not in (None, "file")


def local_path(uri: str) -> Path:
    """The path of a local-storage URI (``file://`` stripped, ``~`` expanded, made absolute)."""
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri).expanduser().resolve()


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


#: the package an object-store scheme needs (fsspec's backend), and the polya extra that installs it
BACKENDS: dict[str, tuple[str, str | None]] = {
    "s3": ("s3fs", "polya[s3]"), "s3a": ("s3fs", "polya[s3]"), "gs": ("gcsfs", "polya[gcs]"),
    "gcs": ("gcsfs", "polya[gcs]"), "az": ("adlfs", None), "abfs": ("adlfs", None), "abfss": ("adlfs", None),
    "hdfs": ("pyarrow", None),
}


def backend_missing(uri: str) -> str | None:
    """The package that ``uri``'s scheme needs and this environment cannot import (None when it imports, or
    the URI is local or needs nothing beyond fsspec)."""
    import importlib

    package = BACKENDS.get(uri_scheme(uri) or "", (None, None))[0]
    if package is None:
        return None
    try:
        importlib.import_module(package)
    except ImportError:
        return package
    return None


def install_hint(uri: str, exc: BaseException | None = None) -> str:
    """'install X (pip install ...)' for the backend ``uri`` needs (fsspec's own message when unknown)."""
    package, extra = BACKENDS.get(uri_scheme(uri) or "", (None, None))
    if package is None:
        return f"its filesystem cannot be loaded: {exc}" if exc else "its filesystem cannot be loaded"
    how = f"pip install {package}" + (f", or pip install '{extra}'" if extra else "")
    return f"{uri_scheme(uri)}:// needs the {package} package: install {package} ({how})"


def filesystem(uri: str):
    """(fsspec filesystem, path inside it) for ``uri``. Object stores list without fsspec's listings cache:
    other processes write under the same prefixes (a cached listing would hide their files). A backend
    that is not installed (s3fs, gcsfs, adlfs) raises StorageError saying what to install."""
    import fsspec

    try:
        if is_remote(uri):
            return fsspec.core.url_to_fs(uri, use_listings_cache=False)
        return fsspec.core.url_to_fs(uri)
    except ImportError as exc:
        raise StorageError(f"{uri}: {install_hint(uri, exc)}") from None


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return local_path(uri).exists()
    fs, path = filesystem(uri)
    return fs.exists(path)


def read_json(uri: str) -> Any:
    if not is_remote(uri):
        return json.loads(local_path(uri).read_text())
    fs, path = filesystem(uri)
    with fs.open(path) as fh:
        return json.loads(fh.read())


def write_json(uri: str, value: Any) -> None:
    """Write ``value`` at ``uri`` whole (a rename locally; object stores put objects atomically)."""
    text = json.dumps(value, indent=1, sort_keys=True, default=float) + "\n"
    if not is_remote(uri):
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")  # unique per writer, threads too
        tmp.write_text(text)
        os.replace(tmp, path)
        return
    fs, path = filesystem(uri)
    with fs.open(path, "w") as fh:
        fh.write(text)


def remove(uri: str) -> None:
    """Delete the tree (or the file) at ``uri`` (nothing when absent)."""
    if not is_remote(uri):
        path = local_path(uri)
        if path.is_file() or path.is_symlink():
            path.unlink(missing_ok=True)
        else:
            shutil.rmtree(path, ignore_errors=True)
        return
    fs, path = filesystem(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def listing(uri: str) -> dict[str, int]:
    """Every file under ``uri`` (relative path -> size in bytes)."""
    if not is_remote(uri):
        root = local_path(uri)
        return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}
    fs, path = filesystem(uri)
    found = fs.find(path, detail=True)
    return {k[len(path.rstrip("/")) + 1:]: int(v["size"]) for k, v in found.items() if v.get("type") != "directory"}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _node_dir(uri: str) -> Path:
    return cache_root() / "storage" / hashlib.sha256(uri.encode()).hexdigest()[:16]


def local_dir(uri: str) -> Path:
    """Where this node writes ``uri`` before pushing it: the folder itself on local storage (a node-local
    folder apart from `fetch`'s copies on an object store)."""
    return staging_dir(uri, "write")


def staging_dir(uri: str, writer: str) -> Path:
    """A folder where ``writer`` (one of several processes on a node writing parts of ``uri``) prepares its
    files before `push`: the folder of ``uri`` itself on local storage, a private node-local one otherwise."""
    return local_path(uri) if not is_remote(uri) else _node_dir(f"{uri}#{writer}")


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock among this node's processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def push(local: Path, uri: str, skip: tuple[str, ...] = (MANIFEST,), known: frozenset[str] = frozenset()
         ) -> dict[str, dict[str, Any]]:
    """Upload the files under ``local`` to ``uri`` (in place on local storage) and record their sizes and
    hashes in a part file beside them; returns that record (relative path -> size, sha256). Files named in
    ``skip`` and paths in ``known`` (pushed already) are left out."""
    files = {str(p.relative_to(local)): p for p in sorted(local.rglob("*"))
             if p.is_file() and p.name not in skip and PARTS not in p.parts and p.name != COMPLETE}
    files = {rel: p for rel, p in files.items() if rel not in known}
    record = {rel: {"size": p.stat().st_size, "sha256": sha256(p)} for rel, p in files.items()}
    if is_remote(uri):
        fs, root = filesystem(uri)
        for rel, p in files.items():
            fs.put_file(str(p), f"{root}/{rel}")
    write_json(join(uri, PARTS, f"{uuid.uuid4().hex}.json"), record)
    return record


def parts(uri: str) -> dict[str, dict[str, Any]]:
    """The merged records of every `push` to ``uri`` (relative path -> size, sha256)."""
    merged: dict[str, dict[str, Any]] = {}
    for rel in sorted(listing(join(uri, PARTS))) if exists(join(uri, PARTS)) else []:
        merged.update(read_json(join(uri, PARTS, rel)))
    return merged


def _signature(uri: str, expected: dict[str, dict[str, Any]]) -> str:
    """What a node-local copy was fetched against: the expected files, else the current listing."""
    basis = expected or listing(uri)
    return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()


def fetch(uri: str, expected: dict[str, dict[str, Any]] | None = None) -> Path:
    """A local folder holding the tree under ``uri``: the folder itself on local storage, else a node-local
    copy downloaded once per node. ``expected`` (relative path -> size, sha256) is checked after the
    download; a copy whose completion mark records other expectations (or another listing) than now, or
    none (a crashed download), is fetched again."""
    if not is_remote(uri):
        path = local_path(uri)
        if not path.exists():
            raise StorageError(f"{uri}: no such file or folder")
        return path
    dest, signature = _node_dir(uri), _signature(uri, expected or {})
    mark = dest / COMPLETE
    if mark.exists() and mark.read_text() == signature:
        return dest
    with file_lock(dest.with_name(dest.name + ".lock")):
        if not (mark.exists() and mark.read_text() == signature):
            _download(uri, dest, expected or {}, signature)
    return dest


def _download(uri: str, dest: Path, expected: dict[str, dict[str, Any]], signature: str) -> None:
    sizes = listing(uri)
    if not sizes:
        raise StorageError(f"{uri}: nothing stored there")
    missing = sorted(set(expected) - set(sizes))
    if missing:
        raise StorageError(f"{uri}: {len(missing)} file(s) the manifest lists are not in storage, e.g. {missing[0]}")
    fs, root = filesystem(uri)
    tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}-{uuid.uuid4().hex[:8]}")
    shutil.rmtree(tmp, ignore_errors=True)
    for rel, size in sizes.items():
        target = tmp / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{root}/{rel}", str(target))
        want = expected.get(rel, {})
        if target.stat().st_size != want.get("size", size):
            raise StorageError(f"{uri}/{rel}: downloaded {target.stat().st_size} bytes, expected {want.get('size', size)}")
        if "sha256" in want and sha256(target) != want["sha256"]:
            raise StorageError(f"{uri}/{rel}: sha256 differs from the manifest's (a corrupt or replaced object)")
    (tmp / COMPLETE).write_text(signature)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
