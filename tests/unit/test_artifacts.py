"""Content-addressed stage outputs: stable keys, manifest written last, crashed attempts cleared."""
from __future__ import annotations

import json

from polya.artifacts import ArtifactStore, stage_key


def test_keys_are_stable_and_sensitive():
    a = stage_key("filter", {"x": 1, "y": [1, 2]}, {"selfgen": "abc"})
    assert a == stage_key("filter", {"y": [1, 2], "x": 1}, {"selfgen": "abc"})  # order-insensitive
    assert a != stage_key("filter", {"x": 2, "y": [1, 2]}, {"selfgen": "abc"})
    assert a != stage_key("filter", {"x": 1, "y": [1, 2]}, {"selfgen": "abd"})
    assert a != stage_key("selfgen", {"x": 1, "y": [1, 2]}, {"selfgen": "abc"})
    assert len(a) == 16


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
    assert manifest["files"] == ["data.txt"] and manifest["figures"] == {"rows": 3}
    again = store.artifact("selfgen", "k1")
    assert again.exists() and json.loads(again.manifest_path.read_text())["key"] == "k1"
    assert again.uri == str((tmp_path / "run" / "selfgen" / "k1").resolve())
