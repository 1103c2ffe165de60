"""`polya run` end to end on a tiny model: every stage's artifact and the report; a changed stage setting
reruns only that stage and later ones; a run killed mid-GRPO resumes to completion from its checkpoint (its
log shows the rerun starting from the checkpoint's step and optimizer step count, not from scratch)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, events, tiny_run
from polya.rl.learner import checkpoint_steps

pytestmark = pytest.mark.slow


def polya_run(path: Path, **kw) -> subprocess.Popen:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", VLLM_CPU_KVCACHE_SPACE="1")
    return subprocess.Popen([sys.executable, "-m", "polya.cli", "run", str(path)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float = 900) -> list[dict]:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return events(out)


def kill_ray_started_by(pid: int) -> None:
    """Ray names a local cluster's session folder after the driver that started it (session_<time>_<pid>)."""
    marker = f"_{pid}/"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "/tmp/ray/session_" in cmd and marker in cmd.replace(" ", "/"):
            try:
                os.kill(int(proc.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_end_to_end_rerun_and_resume(tiny_model, tmp_path):
    storage = tmp_path / "run"
    spec_path = tmp_path / "run.yaml"
    spec_path.write_text(yaml.safe_dump(tiny_run(tiny_model, storage)))

    # 1. the whole pipeline
    ev = finish(polya_run(spec_path))
    done = [e for e in ev if e["event"] == "stage_done"]
    assert [e["step"] for e in done] == ["base/evaluate", "polya/selfgen", "polya/filter", "polya/midtrain",
                                         "polya-sft/evaluate", "polya/grpo", "polya/evaluate"]
    assert not any(e["cached"] for e in done)
    for stage in ("selfgen", "filter", "midtrain", "grpo", "evaluate"):
        folders = list((storage / stage).iterdir())
        assert folders and all((f / "manifest.json").exists() for f in folders), stage
    report = storage / "report"
    for name in ("report.md", "report.html", "passk.png", "grpo_reward.png", "heuristics.png"):
        assert (report / name).stat().st_size > 0, name
    md = (report / "report.md").read_text()
    assert "| base model |" in md and "| mid-trained (SFT) |" in md and "| Polya (SFT + GRPO) |" in md
    assert ev[-1] == {"event": "report", "path": str(report / "report.md")}

    # 2. a changed GRPO setting reruns GRPO and what follows, nothing before it
    spec_path.write_text(yaml.safe_dump(tiny_run(tiny_model, storage, grpo_lr=2e-3)))
    done = [e for e in finish(polya_run(spec_path)) if e["event"] == "stage_done"]
    cached = {e["step"]: e["cached"] for e in done}
    assert cached == {"base/evaluate": True, "polya/selfgen": True, "polya/filter": True, "polya/midtrain": True,
                      "polya-sft/evaluate": True, "polya/grpo": False, "polya/evaluate": False}

    # 3. killed mid-GRPO (after a checkpoint, before its last step), then resumed to completion from it
    spec_path.write_text(yaml.safe_dump(tiny_run(tiny_model, storage, grpo_lr=3e-3, grpo_steps=3)))
    proc = polya_run(spec_path)
    ckpts = storage / "checkpoints" / "grpo"

    def saved() -> dict[str, list[int]]:
        """The complete checkpoints of the GRPO step this run has not committed yet (parts 1-2 committed theirs)."""
        return {d.name: checkpoint_steps(str(d)) for d in ckpts.iterdir()
                if not (storage / "grpo" / d.name / "manifest.json").exists()}

    deadline = time.time() + 600
    while time.time() < deadline and not any(saved().values()) and proc.poll() is None:
        time.sleep(0.1)  # a tiny GRPO step takes seconds: the kill lands well before the next checkpoint
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    kill_ray_started_by(proc.pid)  # what a killed `polya run` leaves behind (never this session's own Ray)
    written = saved()
    assert len(written) == 1 and next(iter(written.values())), f"no GRPO checkpoint before the kill: {written}"
    (key, at_kill), = written.items()
    last = at_kill[-1]
    assert last < 3, f"killed too late: GRPO had checkpointed its last step ({at_kill}), nothing left to resume"

    done = [e for e in finish(polya_run(spec_path)) if e["event"] == "stage_done"]
    grpo = next(e for e in done if e["step"] == "polya/grpo")
    assert grpo["cached"] is False and grpo["figures"]["steps"] == 3
    art = Path(grpo["artifact"])
    assert art.name == key
    steps = json.loads((art / "steps.json").read_text())
    assert [r["step"] for r in steps] == [1, 2, 3]
    # the rerun started from the newest checkpoint the killed run wrote, with its optimizer step count
    resumes = json.loads((art / "resumes.json").read_text())
    assert len(resumes) == 1 and resumes[0]["from_step"] == last, \
        f"the rerun did not resume from the step-{last} checkpoint (resumes.json: {resumes})"
    first, again = steps[0]["attempt"], resumes[0]["attempt"]
    assert first != again
    assert [(r["attempt"], r["resumed_from"]) for r in steps] == [(first, 0)] * last + [(again, last)] * (3 - last)
    per_step = steps[0]["optimizer_step"]  # optimizer steps per GRPO step (mu inner epochs)
    assert per_step >= 1 and resumes[0]["optimizer_steps"] == last * per_step, \
        f"optimizer step count not restored: {resumes}"
    assert [r["optimizer_step"] for r in steps] == [n * per_step for n in (1, 2, 3)]
