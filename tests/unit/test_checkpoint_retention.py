"""Which step checkpoints a learner deletes (keepCheckpoints) and how: pure selection, then on a real folder."""
from __future__ import annotations

import json

import pytest

from polya.rl.learner import CKPT_STATE, checkpoint_steps, prune_checkpoints, stale_checkpoints


@pytest.mark.parametrize(("complete", "newest", "keep", "drop"), [
    ([1, 2, 3, 4], 4, None, []),  # default: every checkpoint stays
    ([1, 2, 3, 4], 4, 2, [1, 2]),  # the newest two: 3 and 4
    ([1, 2, 3, 4], 4, 1, [1, 2, 3]),
    ([2, 4], 4, 5, []),  # fewer than keep
    ([2, 4, 6, 8], 4, 1, [2]),  # never what is newer than the new one (another writer's)
    ([2, 4, 6, 8], 6, 2, [2]),
])
def test_stale_checkpoints(complete, newest, keep, drop):
    assert stale_checkpoints(complete, newest, keep) == drop


def _checkpoint(root, step, complete=True):
    folder = root / f"step_{step}"
    (folder / "checkpoint").mkdir(parents=True)
    (folder / "checkpoint" / "shard.pt").write_bytes(b"x" * 10)
    if complete:
        (folder / CKPT_STATE).write_text(json.dumps({"step": step}))


def test_prune_deletes_the_old_complete_folders_only(tmp_path):
    for step in (1, 2, 3, 5):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 4, complete=False)  # a crashed attempt's: replaced when step 4 is saved again
    assert prune_checkpoints(str(tmp_path), 5, None) == []  # keep all: nothing is even listed
    assert prune_checkpoints(str(tmp_path), 5, 2) == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_3", "step_4", "step_5"]
    assert checkpoint_steps(str(tmp_path)) == [3, 5]
    assert prune_checkpoints(str(tmp_path), 5, 1) == [3]
    assert checkpoint_steps(str(tmp_path)) == [5]
    assert prune_checkpoints(str(tmp_path / "absent"), 1, 1) == []
