"""Which step checkpoints a learner deletes (keepCheckpoints) and how: pure selection, then on a real folder."""
from __future__ import annotations

import json

import pytest

from polya.rl.learner import CKPT_STATE, checkpoint_folders, checkpoint_steps, prune_checkpoints, stale_checkpoints


@pytest.mark.parametrize(("complete", "partial", "newest", "keep", "drop"), [
    ([1, 2, 3, 4], [], 4, None, []),  # default: every checkpoint stays
    ([1, 2, 3, 4], [], 4, 2, [1, 2]),  # the newest two: 3 and 4
    ([1, 2, 3, 4], [], 4, 1, [1, 2, 3]),
    ([2, 4], [], 4, 5, []),  # fewer than keep
    ([2, 4, 6], [5], 4, 1, [2]),  # never what is newer than the new one (another writer's, complete or not)
    ([1, 2], [3, 5], 4, None, [3]),  # a crashed attempt's partial folder older than the new checkpoint goes
])
def test_stale_checkpoints(complete, partial, newest, keep, drop):
    assert stale_checkpoints(complete, partial, newest, keep) == drop


def _checkpoint(root, step, complete=True):
    folder = root / f"step_{step}"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "shard.pt").write_bytes(b"x" * 10)
    if complete:
        (folder / CKPT_STATE).write_text(json.dumps({"step": step}))


def test_prune_deletes_old_and_partial_folders_and_keeps_the_newest(tmp_path):
    for step in (1, 2, 3):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 4, complete=False)  # a crashed attempt's step 4 ...
    _checkpoint(tmp_path, 5)  # ... redone after the resume as step 5's predecessor
    assert checkpoint_folders(str(tmp_path)) == ([1, 2, 3, 5], [4])
    assert prune_checkpoints(str(tmp_path), 5, 2) == [1, 2, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_5"]
    assert checkpoint_steps(str(tmp_path)) == [3, 5]
    assert prune_checkpoints(str(tmp_path), 5, None) == []  # keep all: nothing more
    assert prune_checkpoints(str(tmp_path / "absent"), 1, 1) == []
