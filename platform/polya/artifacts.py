"""Content-addressed stage outputs: ``<storage>/<stage>/<key>/`` with a manifest written last.

The key is a hash of the stage's name, its settings, the keys of its input artifacts and a format
version (`polya.recipe.cache_key`). A folder whose ``manifest.json`` exists is complete: the stage is skipped on rerun. A folder
without one is a crashed attempt: it is cleared and the stage runs again. Local paths are written in
place; for object-store URIs (s3://, gs://, …) stages write to a local staging folder and `commit`
uploads it through fsspec, manifest last.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polya.spec import uri_scheme

MANIFEST = "manifest.json"


@dataclass
class Artifact:
    stage: str
    key: str
    uri: str  # where it lives (final)
    local: Path  # where the stage reads and writes it

    @property
    def manifest_path(self) -> Path:
        return self.local / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.exists()

    def manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text())


class ArtifactStore:
    def __init__(self, uri: str, staging: str | Path | None = None):
        self.uri = uri.rstrip("/")
        self.remote = uri_scheme(uri) not in (None, "file")
        root = uri[len("file://"):] if uri.startswith("file://") else uri
        self.root = Path(staging or Path.home() / ".cache" / "polya" / "staging") / hashlib.sha1(
            uri.encode()).hexdigest()[:12] if self.remote else Path(root).expanduser().resolve()
        # (a relative local path is taken from the directory `polya run` starts in; workers get absolute paths)

    def artifact(self, stage: str, key: str) -> Artifact:
        local = self.root / stage / key
        uri = f"{self.uri}/{stage}/{key}" if self.remote else str(local.resolve())
        art = Artifact(stage, key, uri, local)
        if self.remote and not art.exists():
            self._download(art)
        return art

    def begin(self, art: Artifact) -> Path:
        """A clean folder for a (re)run of ``art``'s stage."""
        if art.local.exists():
            shutil.rmtree(art.local)
        art.local.mkdir(parents=True)
        return art.local

    def commit(self, art: Artifact, figures: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        files = sorted(str(p.relative_to(art.local)) for p in art.local.rglob("*") if p.is_file() and p.name != MANIFEST)
        manifest = {"stage": art.stage, "key": art.key, "uri": art.uri, "files": files, "figures": figures,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        tmp = art.local / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=float) + "\n")
        os.replace(tmp, art.manifest_path)  # the manifest appears atomically, and last
        if self.remote:
            self._upload(art)
        return manifest

    # --------------------------------------------------------------------- object stores (fsspec)
    def _download(self, art: Artifact) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(art.uri)
        if fs.exists(f"{path}/{MANIFEST}"):
            art.local.mkdir(parents=True, exist_ok=True)
            fs.get(f"{path}/", str(art.local) + "/", recursive=True)

    def _upload(self, art: Artifact) -> None:
        import fsspec

        fs, path = fsspec.core.url_to_fs(art.uri)
        for p in sorted(art.local.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                fs.put_file(str(p), f"{path}/{p.relative_to(art.local)}")
        fs.put_file(str(art.manifest_path), f"{path}/{MANIFEST}")


# ------------------------------------------------------------------------------------ stage results
RESULTS_DIR = "results"


def _result_name(step_key: str) -> str:
    return step_key.replace("/", "-") + ".json"


def write_result(storage_uri: str, step_key: str, artifact_uri: str, figures: dict[str, Any]) -> None:
    """`<storage>/results/<arm>-<stage>.json`: where a stage's output is, for the operator's status."""
    import fsspec

    payload = json.dumps({"step": step_key, "artifactUri": artifact_uri, "figures": figures}, default=float)
    fs, root = fsspec.core.url_to_fs(storage_uri)
    fs.makedirs(f"{root}/{RESULTS_DIR}", exist_ok=True)
    with fs.open(f"{root}/{RESULTS_DIR}/{_result_name(step_key)}", "w") as fh:
        fh.write(payload)


def read_results(storage_uri: str) -> dict[str, dict[str, Any]]:
    """Every stage result written under ``storage_uri``, by step key ("arm/stage")."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(storage_uri)
    out: dict[str, dict[str, Any]] = {}
    if not fs.exists(f"{root}/{RESULTS_DIR}"):
        return out
    for path in fs.ls(f"{root}/{RESULTS_DIR}", detail=False):
        if str(path).endswith(".json"):
            with fs.open(path) as fh:
                data = json.loads(fh.read())
            out[data["step"]] = data
    return out
