"""Content-addressed stage outputs: ``<storage>/<stage>/<key>/`` with a manifest written last.

The key is a hash of the stage's name, its settings, the keys of its input artifacts and a format
version (`polya.recipe.cache_key`). A folder whose ``manifest.json`` exists is complete: the stage is
skipped on rerun. A folder without one is a crashed attempt: it is cleared and the stage runs again.

An artifact is addressed by its URI; every process writes its share of the files in its node's
`local_dir` and pushes them (`polya.storage.push`), the driver last: `commit` pushes the driver's files,
then writes the manifest (figures, and every file with its size and sha256) — on local storage all of
this happens in place. A process that reads an artifact `fetch`es it (a node-local copy on an object
store, checked against the manifest).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polya import storage
from polya.storage import MANIFEST


@dataclass
class Artifact:
    stage: str
    key: str
    uri: str  # where it lives: the storage URI every process addresses it by

    @property
    def local(self) -> Path:
        """Where this node writes the artifact's files (the folder itself on local storage)."""
        return storage.local_dir(self.uri)

    def exists(self) -> bool:
        return storage.exists(storage.join(self.uri, MANIFEST))

    def manifest(self) -> dict[str, Any]:
        return storage.read_json(storage.join(self.uri, MANIFEST))

    def fetch(self, sub: str = "") -> Path:
        """A local folder holding the complete artifact (or its ``sub`` folder), checked against the manifest."""
        return fetch_uri(self.child(sub) if sub else self.uri)

    def child(self, sub: str) -> str:
        return storage.join(self.uri, sub)


def fetch_uri(uri: str) -> Path:
    """`storage.fetch` of an artifact or a folder inside one, with the sizes and hashes its manifest records."""
    if not storage.is_remote(uri):
        return storage.fetch(uri)
    root, sub = uri, ""
    for _ in range(3):  # the manifest sits at the artifact's root: at most a couple of levels up
        if root.partition("://")[2].count("/") < 1:
            break  # a bucket's root: no artifact holds it
        if storage.exists(storage.join(root, MANIFEST)):
            files = storage.read_json(storage.join(root, MANIFEST)).get("files", {})
            prefix = sub + "/" if sub else ""
            expected = {k[len(prefix):]: v for k, v in files.items() if isinstance(v, dict) and k.startswith(prefix)}
            return storage.fetch(uri, expected)
        root, _, tail = root.rstrip("/").rpartition("/")
        sub = f"{tail}/{sub}".strip("/")
    return storage.fetch(uri)


class ArtifactStore:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/") if storage.is_remote(uri) else str(storage.local_path(uri))
        # (a relative local path is taken from the directory `polya run` starts in; workers get absolute URIs)

    def child(self, *parts: str) -> str:
        return storage.join(self.uri, *parts)

    def artifact(self, stage: str, key: str) -> Artifact:
        return Artifact(stage, key, self.child(stage, key))

    def begin(self, art: Artifact) -> Path:
        """A clean artifact for a (re)run of ``art``'s stage (a crashed attempt's files removed); this node's
        folder to write in."""
        storage.remove(art.uri)
        storage.remove(str(art.local))
        art.local.mkdir(parents=True)
        return art.local

    def commit(self, art: Artifact, figures: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Push the driver's files, then write the manifest: every file of the artifact, whichever process
        pushed it, with its size and sha256."""
        if art.local.exists():
            storage.push(art.local, art.uri, known=frozenset(storage.parts(art.uri)))
        files = dict(sorted(storage.parts(art.uri).items()))
        manifest = {"stage": art.stage, "key": art.key, "uri": art.uri, "files": files, "figures": figures,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **(extra or {})}
        storage.write_json(storage.join(art.uri, MANIFEST), manifest)  # last: the artifact is complete
        return manifest


# ------------------------------------------------------------------------------------ stage results
RESULTS_DIR = "results"


def _result_name(step_key: str) -> str:
    return step_key.replace("/", "-") + ".json"


def write_result(storage_uri: str, step_key: str, artifact_uri: str, figures: dict[str, Any]) -> None:
    """`<storage>/results/<arm>-<stage>.json`: where a stage's output is, for the operator's status."""
    storage.write_json(storage.join(storage_uri, RESULTS_DIR, _result_name(step_key)),
                       {"step": step_key, "artifactUri": artifact_uri, "figures": figures})


def read_results(storage_uri: str) -> dict[str, dict[str, Any]]:
    """Every stage result written under ``storage_uri``, by step key ("arm/stage")."""
    folder = storage.join(storage_uri, RESULTS_DIR)
    if not storage.exists(folder):
        return {}
    found = (storage.read_json(storage.join(folder, rel)) for rel in storage.listing(folder) if rel.endswith(".json"))
    return {data["step"]: data for data in found}
