"""The sandbox for generated programs, for real (bubblewrap + rlimits, no mocks): every hostile program ends
as a non-passed Outcome within its limits, and this process and the machine carry on. Skipped only where
`unavailable()` says the sandbox cannot run here and CI is not set; under CI that is a failure."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO

from polya.sandbox import SANDBOX_UIDS, Limits, Outcome, SandboxPool, run_python, unavailable

#: limits for programs that end by themselves: small, but a wall clock generous enough for a loaded
#: machine (a program that should end on its own never reaches it); cases meant to time out use 2 s
FAST = Limits(wall_s=15.0, cpu_s=5.0, memory_mb=512, nproc=16, output_bytes=1 << 16)
#: every case must end within its wall_s + SLACK (the kill and the namespace's teardown)
SLACK = 3.0


@pytest.fixture(autouse=True, scope="module")
def sandbox_works():
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the sandbox must work in CI: {reason}")
        pytest.skip(f"sandbox unavailable here: {reason}")


def run(source: str, limits: Limits = FAST) -> Outcome:
    out = run_python(source, limits)
    assert out.wall_s <= limits.wall_s + SLACK, out
    return out


def processes_of(uid: int) -> list[int]:
    """Host pids whose real uid is ``uid``."""
    pids = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            line = next(ln for ln in status.read_text().splitlines() if ln.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(line.split()[1]) == uid:
            pids.append(int(status.parent.name))
    return pids


def assert_machine_fine(out: Outcome) -> None:
    """A normal program still runs right after; as root, where each run has a uid of its own (printed
    first by the hostile program), none of that run's processes is left once run_python returned."""
    uid = int(out.stdout.split()[0])
    if os.geteuid() == 0:
        assert uid in SANDBOX_UIDS
        assert processes_of(uid) == []
    assert run("print(6 * 7)").stdout == "42\n"


def test_a_correct_program_passes():
    out = run("import sys\nprint('hello')\nprint('warn', file=sys.stderr)\nassert sum(range(4)) == 6\n")
    assert (out.status, out.exit_code, out.stdout, out.stderr) == ("passed", 0, "hello\n", "warn\n")
    assert out.passed


def test_an_assertion_failure_is_failed():
    out = run("assert 1 + 1 == 3, 'arithmetic'\n")
    assert (out.status, out.exit_code, out.passed) == ("failed", 1, False)
    assert "AssertionError: arithmetic" in out.stderr


def test_an_infinite_loop_times_out():
    out = run("while True:\n    pass\n", Limits(wall_s=2.0, cpu_s=10.0, memory_mb=256, nproc=4))
    assert (out.status, out.exit_code) == ("timeout", None)
    assert 2.0 <= out.wall_s <= 2.0 + SLACK


def test_the_cpu_limit_kills_a_spinning_program():
    # a generous wall clock: on a loaded machine one CPU second can take several wall seconds
    out = run("while True:\n    pass\n", Limits(wall_s=30.0, cpu_s=1.0, memory_mb=256, nproc=4))
    assert (out.status, out.exit_code) == ("killed", -signal.SIGXCPU)


def test_a_fork_bomb_is_contained_and_cleaned_up():
    bomb = ("import os\nprint(os.getuid(), flush=True)\n"
            "while True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n")
    out = run(bomb, Limits(wall_s=2.0, cpu_s=10.0, memory_mb=256, nproc=8))
    assert out.status == "timeout"
    assert_machine_fine(out)


def test_the_process_limit_refuses_extra_processes():
    source = ("import os, time\nprint(os.getuid(), flush=True)\nkids = 0\n"
              "try:\n    while kids < 64:\n        if os.fork() == 0:\n"
              "            time.sleep(30)\n            os._exit(0)\n        kids += 1\n"
              "except OSError as e:\n    print('refused after', kids, e.errno)\n    raise SystemExit(2)\n")
    out = run(source, Limits(wall_s=15.0, cpu_s=3.0, memory_mb=256, nproc=8))
    assert out.status == "failed" and out.stdout.split()[1:3] == ["refused", "after"], out
    assert int(out.stdout.split()[3]) < 8
    assert_machine_fine(out)


def test_a_10_gb_allocation_fails_quickly():
    out = run("x = bytearray(10 * 1024 ** 3)\nprint(len(x))\n")
    assert out.status in ("failed", "killed") and out.stdout == ""   # ended by itself, not a timeout
    assert "MemoryError" in out.stderr or out.status == "killed"


def test_writes_outside_the_private_tmp_do_not_reach_the_host(tmp_path):
    targets = [Path("/etc/polya-sandbox-test"), REPO / "polya-sandbox-test", tmp_path / "escaped",
               Path("/usr/polya-sandbox-test")]
    source = (f"import os\nok = []\nfor p in {[str(t) for t in targets]!r}:\n    try:\n"
              "        open(p, 'w').write('x')\n        ok.append(p)\n    except OSError:\n        pass\n"
              "open('/tmp/mine', 'w').write('private')\nassert open('/tmp/mine').read() == 'private'\n"
              "raise SystemExit(0 if ok else 3)\n")
    out = run(source)
    assert (out.status, out.exit_code) == ("failed", 3), out
    assert not any(t.exists() for t in targets)


def test_host_files_outside_the_system_view_are_invisible(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("polya-top-secret")
    paths = [str(secret), str(REPO / "pyproject.toml"), "/root/.bashrc", "/etc/shadow", "/etc/hostname"]
    source = (f"seen = []\nfor p in {paths!r}:\n    try:\n        seen.append(open(p).read())\n"
              "    except OSError:\n        pass\n"
              "import os\nprint(sorted(os.listdir('/')), os.listdir('/tmp'))\n"
              "raise SystemExit(0 if seen else 3)\n")
    out = run(source)
    assert (out.status, out.exit_code) == ("failed", 3), out
    assert "polya-top-secret" not in out.stdout + out.stderr
    assert "work" not in out.stdout and "['main.py']" in out.stdout


def test_no_network_even_to_the_hosts_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.setblocking(False)
        port = server.getsockname()[1]
        source = (f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                  "print('CONNECTED')\n")
        out = run(source)
        assert out.status == "failed" and "CONNECTED" not in out.stdout
        assert "ConnectionRefusedError" in out.stderr or "OSError" in out.stderr, out.stderr
        with pytest.raises(BlockingIOError):
            server.accept()


def test_killing_the_parent_and_the_group_hurts_only_the_program():
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        source = ("import os, signal\nprint(os.getuid(), flush=True)\n"
                  "for f in (lambda: os.kill(os.getppid(), 9), lambda: os.kill(-1, 9),\n"
                  "          lambda: os.kill(1, 9)):\n    try:\n        f()\n    except OSError as e:\n"
                  "        print('refused', e.errno, flush=True)\nos.killpg(0, signal.SIGKILL)\n")
        out = run(source)
        assert (out.status, out.exit_code) == ("killed", -signal.SIGKILL), out
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
    assert_machine_fine(out)


def test_100_mb_of_output_is_capped_and_the_program_finishes():
    source = "import sys\nchunk = 'x' * 65536\nfor _ in range(1600):\n    sys.stdout.write(chunk)\n"
    out = run(source, Limits(wall_s=30.0, cpu_s=20.0, memory_mb=256, nproc=4, output_bytes=1 << 16))
    assert out.status == "passed"
    assert len(out.stdout) + len(out.stderr) <= 1 << 16
    assert out.stdout == "x" * (1 << 16)


def test_a_sandbox_that_cannot_start_is_an_error_not_a_failure(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))   # no bwrap to be found
    out = run_python("print(1)", FAST)
    assert (out.status, out.passed) == ("error", False) and "bwrap" in out.stderr


def test_too_little_memory_for_the_interpreter_is_not_a_pass():
    out = run("print(1)", Limits(wall_s=15.0, cpu_s=3.0, memory_mb=1, nproc=4))
    assert not out.passed and out.stdout == ""


def test_the_pool_keeps_order_and_runs_programs_concurrently():
    sources = [f"import time\nstart = time.time()\ntime.sleep(2)\nprint({i}, start, time.time())\n"
               for i in range(4)]
    outs = SandboxPool(workers=2, limits=FAST).run_all(sources)
    assert [o.status for o in outs] == ["passed"] * 4
    rows = [o.stdout.split() for o in outs]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    spans = sorted((float(r[1]), float(r[2])) for r in rows)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), spans   # at least two ran at once


def test_one_hung_program_does_not_hold_up_the_others():
    limits = Limits(wall_s=10.0, cpu_s=10.0, memory_mb=256, nproc=4)  # room for 5 starts on a loaded machine
    sources = ["import time\ntime.sleep(3600)\n"] + [f"print({i})" for i in range(1, 6)]
    t0 = time.monotonic()
    outs = SandboxPool(workers=2, limits=limits).run_all(sources)
    assert time.monotonic() - t0 < limits.wall_s + 2 * SLACK
    assert outs[0].status == "timeout"
    assert [(o.status, o.stdout) for o in outs[1:]] == [("passed", f"{i}\n") for i in range(1, 6)]
    assert SandboxPool().run_all([]) == []
