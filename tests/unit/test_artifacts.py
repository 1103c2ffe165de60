"""Content-addressed stage outputs: stable keys, manifest written last, crashed attempts cleared."""
from __future__ import annotations

import hashlib
import json

from polya.artifacts import ArtifactStore


def test_commit_and_resume(tmp_path):
    store = ArtifactStore(str(tmp_path / "run"))
    art = store.artifact("selfgen", "k1")
    assert not art.exists()
    folder = store.begin(art)
    (folder / "data.txt").write_text("partial")
    assert not store.artifact("selfgen", "k1").exists()  # no manifest: a crashed attempt
    folder = store.begin(art)  # a rerun starts clean
    assert list(folder.iterdir()) == []
    (folder / "data.txt").write_text("done")
    manifest = store.commit(art, {"rows": 3})
    sha = hashlib.sha256(b"done").hexdigest()
    assert manifest["files"] == {"data.txt": {"size": 4, "sha256": sha}} and manifest["figures"] == {"rows": 3}
    again = store.artifact("selfgen", "k1")
    assert again.exists() and json.loads((again.local / "manifest.json").read_text())["key"] == "k1"
    assert again.uri == str((tmp_path / "run" / "selfgen" / "k1").resolve())
