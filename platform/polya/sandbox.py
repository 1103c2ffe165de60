"""Run hostile generated Python programs in a sandbox: Debian's bubblewrap (``bwrap``) plus rlimits.

Each program runs as ``python -I /tmp/main.py`` (this process's own interpreter, isolated mode) with:

* no network: a fresh network namespace holding only loopback, so the host's 127.0.0.1 is unreachable;
* its own pid, ipc, uts (and, where the kernel allows, cgroup) namespaces; ``--die-with-parent`` and
  ``--new-session`` (no TIOCSTI into the caller's terminal);
* a read-only view of the system that is NOT the host's ``/``: ``/usr``, the top-level ``/bin``, ``/lib*``
  and ``/sbin`` (symlinks kept as symlinks), a handful of ``/etc`` files the dynamic loader and ``time``
  need, and the interpreter's install prefix (``sys.base_prefix``, bound at its own path because a shared
  libpython is found through an rpath). ``/work``, ``/root``, ``/home``, the host's ``/tmp``, ``/sys`` and
  the environment (``--clearenv``) are not there;
* a private writable ``/tmp`` (a tmpfs of ``memory_mb`` at most, holding the program; it vanishes with the
  mount namespace, so nothing is left on the host) and the program's source copied in from a memfd;
* rlimits set by ``prlimit`` inside the sandbox: RLIMIT_AS, RLIMIT_CPU (SIGXCPU at ``cpu_s``, SIGKILL a
  second later), RLIMIT_FSIZE, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_CORE=0;
* a wall-clock limit enforced here: on timeout the pid namespace's init is SIGKILLed, so the kernel kills
  every process left in the namespace, a fork bomb's children included, then bwrap's process group; if
  the caller itself dies, ``--die-with-parent`` takes the sandbox down with it;
* stdout+stderr read incrementally with ``select``; at most ``output_bytes`` are kept, the rest is read
  and dropped, so a program printing 100 MB costs the caller nothing.

Measured here (Debian bookworm container, kernel 6.18, running as root, bubblewrap 0.8.0): RLIMIT_NPROC is
not enforced for processes whose real uid is 0 (the kernel exempts INIT_USER), and a user namespace made
by bwrap as root maps the sandbox back to uid 0, so ``--uid`` alone does not help. What works as root:
bwrap WITHOUT a user namespace (privileged mode), keeping only CAP_SETUID/CAP_SETGID/CAP_SETPCAP for the
launcher, which (``setpriv``) switches to a fresh random uid/gid from ``SANDBOX_UIDS``, clears groups,
the inheritable and bounding capability sets, and keeps no_new_privs; the program then has no
capabilities and an NPROC count of its own (a unique uid per run, so concurrent sandboxes never share it).
Lowering rlimits inside bwrap works; what ENVIRONMENT.md saw refused for podman was setting NOFILE/NPROC
above this container's hard limits (NOFILE 20000 here), which the sandbox never does. When not root,
bwrap makes an unprivileged user namespace (``--unshare-all``) and the limits are set the same way;
the program keeps the caller's uid (NPROC is then counted per user namespace, bwrap's
init included). Both modes were measured: as root, and as uid 1000 with the system's python3.
On timeout the namespace's init is killed first, so ``run_python`` returns only once every process of
the sandbox is gone (a 32-process fork bomb: ~0.4 s after the deadline).

Not covered: aggregate memory of a program's processes (RLIMIT_AS is per process: ``nproc * memory_mb``
is the worst case; no memory cgroup is used), the tmpfs's size counts against host RAM, no seccomp filter
(the whole syscall surface of the kernel is reachable, e.g. nested user namespaces, which cannot raise
the limits), disk I/O and CPU share are not throttled, and an exit code of 128+N (N a signal number) from
bwrap is read as "killed by signal N" even when the program chose that code itself.
"""
from __future__ import annotations

import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: uids/gids a program runs as when the caller is root (one fresh value per run; none of them in passwd)
SANDBOX_UIDS = range(0x5A00_0000, 0x5A00_0000 + (1 << 24))
#: where the program sits inside the sandbox (also its working directory)
WORKDIR = "/tmp"
PROGRAM = f"{WORKDIR}/main.py"
#: top-level names mirrored from the host (symlink or read-only bind), and the /etc entries exposed
TOP_LEVEL = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "alternatives")
#: seconds to wait for bwrap to go after SIGKILL (it is reaped at once in practice)
KILL_GRACE_S = 5.0
READ_CHUNK = 1 << 16
OPEN_FILES = 1024


@dataclass(frozen=True)
class Limits:
    wall_s: float = 10.0      # wall clock per program
    cpu_s: float = 10.0       # CPU seconds per program
    memory_mb: int = 1024     # address space
    nproc: int = 32           # processes/threads the program may have
    output_bytes: int = 1 << 20  # stdout+stderr kept (rest discarded, never buffered unbounded)


@dataclass(frozen=True)
class Outcome:
    status: str        # "passed" | "failed" | "timeout" | "killed" | "error" (the sandbox itself failed)
    exit_code: int | None  # the program's exit code; -N when killed by signal N; None on timeout
    stdout: str
    stderr: str
    wall_s: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def unavailable() -> str | None:
    """None when the sandbox works on this machine, else a one-line reason naming the fix."""
    return _probe()


@lru_cache(maxsize=1)
def _probe() -> str | None:
    fix = "run `bash tools/sandbox/ensure-bwrap.sh` (apt-get install -y bubblewrap)"
    if shutil.which("bwrap") is None:
        return f"bubblewrap (bwrap) is not installed: {fix}"
    missing = [t for t in _launcher_tools() if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install -y util-linux"
    out = run_python("print('sandbox-ok')", Limits(wall_s=20.0, cpu_s=5.0, memory_mb=512, nproc=8))
    if out.stdout.strip() != "sandbox-ok":
        why = (out.stderr.strip().splitlines() or [out.status])[-1]
        return f"bwrap cannot start a sandbox here ({why}): needs user namespaces or root; {fix}"
    return None


def _launcher_tools() -> tuple[str, ...]:
    return ("prlimit", "setpriv") if os.geteuid() == 0 else ("prlimit",)


def _interpreter() -> tuple[Path, Path]:
    """(the real interpreter binary, its install prefix): a venv's python resolves to its base install."""
    return Path(os.path.realpath(sys.executable)), Path(os.path.realpath(sys.base_prefix))


def _under(path: Path, root: str) -> bool:
    return path == Path(root) or Path(root) in path.parents


def _system_view() -> list[str]:
    """bwrap arguments for the read-only system: /usr, top-level links, some /etc, the interpreter."""
    args = ["--ro-bind", "/usr", "/usr"]
    for name in TOP_LEVEL:
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            args += ["--ro-bind", str(host), str(host)]
    args += ["--perms", "0755", "--dir", "/etc"]
    for name in ETC_ENTRIES:
        if (Path("/etc") / name).exists():
            args += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
    prefix = _interpreter()[1]
    if not any(_under(prefix, top) for top in ("/usr", *(f"/{t}" for t in TOP_LEVEL))):
        # bwrap makes missing parents 0700, which an unprivileged uid cannot cross: make them 0755 first
        for parent in reversed(prefix.parents[:-1]):
            args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(prefix), str(prefix)]
    return args


def _namespaces(privileged: bool) -> list[str]:
    common = ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
    if not privileged:
        return ["--unshare-all", *common]
    caps = [a for c in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for a in ("--cap-add", c)]
    return ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            *common, *caps]


def _launcher(limits: Limits, uid: int | None) -> list[str]:
    """prlimit (and, as root, setpriv to ``uid``) then the interpreter on the program."""
    mem, cpu = limits.memory_mb << 20, max(1, math.ceil(limits.cpu_s))
    cmd = ["prlimit", f"--as={mem}", f"--cpu={cpu}:{cpu + 1}", f"--fsize={mem}", "--core=0",
           f"--nproc={limits.nproc}", f"--nofile={OPEN_FILES}", "--"]
    if uid is not None:
        cmd += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
                "--bounding-set=-all", "--no-new-privs", "--"]
    return [*cmd, str(_interpreter()[0]), "-I", PROGRAM]


def _command(limits: Limits, source_fd: int, status_fd: int) -> list[str]:
    privileged = os.geteuid() == 0
    uid = SANDBOX_UIDS[secrets.randbelow(len(SANDBOX_UIDS))] if privileged else None
    env = ["--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME", WORKDIR,
           "--setenv", "TMPDIR", WORKDIR, "--setenv", "LANG", "C.UTF-8"]
    size = str(limits.memory_mb << 20)  # each writable tmpfs is host RAM: bounded like the program's memory
    files = ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
             "--perms", "1777", "--size", size, "--tmpfs", WORKDIR,
             "--perms", "0444", "--file", str(source_fd), PROGRAM, "--chdir", WORKDIR]
    if not privileged:  # bwrap's own root and /dev are writable by the sandbox's (mapped) owner: make them not
        files += ["--remount-ro", "/", "--remount-ro", "/dev"]
    return ["bwrap", *_namespaces(privileged), *_system_view(), *files, *env,
            "--json-status-fd", str(status_fd), *_launcher(limits, uid)]


def _drain(proc: subprocess.Popen, status_fd: int, limits: Limits,
           deadline: float) -> tuple[bytes, bytes, str, bool]:
    """Read stdout, stderr and bwrap's JSON status until all close (every process of the sandbox gone)
    or the deadline passes: (stdout, stderr, status text, timed out). At most ``output_bytes`` of
    stdout+stderr are kept, the rest is read and dropped."""
    out_fd, err_fd = proc.stdout.fileno(), proc.stderr.fileno()
    bufs = {out_fd: bytearray(), err_fd: bytearray(), status_fd: bytearray()}
    room = limits.output_bytes
    with selectors.DefaultSelector() as sel:
        for fd in bufs:
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and (left := deadline - time.monotonic()) > 0:
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, READ_CHUNK)
                if not chunk:
                    sel.unregister(key.fd)
                elif key.fd == status_fd:
                    bufs[key.fd] += chunk[:READ_CHUNK - len(bufs[key.fd])]
                else:
                    bufs[key.fd] += chunk[:room]
                    room -= min(room, len(chunk))
        timed_out = bool(sel.get_map())
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    return bytes(bufs[out_fd]), bytes(bufs[err_fd]), bufs[status_fd].decode(errors="replace"), timed_out


def _status_docs(text: str) -> list[dict]:
    """bwrap's --json-status-fd output: JSON objects one after another."""
    docs = []
    for piece in text.replace("}", "}\n").splitlines():
        try:
            docs.append(json.loads(piece))
        except ValueError:
            continue
    return [d for d in docs if isinstance(d, dict)]


def _kill(proc: subprocess.Popen, status: str) -> None:
    """End the sandbox and return once every process in it is gone. While bwrap runs, SIGKILL its pid
    namespace's init (bwrap's "child-pid"; the kernel then kills everything in the namespace), then
    bwrap's process group. bwrap may exit before the namespace is empty (it reports the program's exit
    and goes; die-with-parent then kills the init), so wait for the init to become a zombie: it does only
    after the kernel has reaped every other process of the namespace."""
    pids = [d["child-pid"] for d in _status_docs(status) if isinstance(d.get("child-pid"), int)]
    if pids and proc.poll() is None:
        try:
            os.kill(pids[0], signal.SIGKILL)
            proc.wait(timeout=KILL_GRACE_S)
        except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.kill()
    try:
        proc.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    if pids:
        _await_exit(pids[0], time.monotonic() + KILL_GRACE_S)


def _await_exit(pid: int, deadline: float) -> None:
    """Wait (read-only: the pid may be reused once reaped) until ``pid`` is a zombie or gone."""
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.01)


def _classify(returncode: int | None, timed_out: bool, status: str) -> tuple[str, int | None]:
    if timed_out:
        return "timeout", None
    started = any("exit-code" in d for d in _status_docs(status))  # none when bwrap's own setup failed
    if not started or returncode is None or returncode < 0:
        return "error", returncode
    if returncode == 0:
        return "passed", 0
    if 128 < returncode <= 128 + 64:
        return "killed", -(returncode - 128)
    return "failed", returncode


def _execute(source: str, limits: Limits) -> Outcome:
    start = time.monotonic()
    source_fd = os.memfd_create("sandbox-program")
    status_r, status_w = os.pipe()
    try:
        os.write(source_fd, source.encode())
        os.lseek(source_fd, 0, os.SEEK_SET)
        proc = subprocess.Popen(_command(limits, source_fd, status_w), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                pass_fds=(source_fd, status_w), cwd="/")
        os.close(status_w)
        status_w = -1
        with proc:
            out, err, status, timed_out = b"", b"", "", True
            try:
                out, err, status, timed_out = _drain(proc, status_r, limits, start + limits.wall_s)
            finally:
                _kill(proc, status)
        code = _classify(proc.returncode, timed_out, status)
        return Outcome(*code, out.decode(errors="replace"), err.decode(errors="replace"),
                       time.monotonic() - start)
    finally:
        for fd in (source_fd, status_r, status_w):
            if fd >= 0:
                os.close(fd)


def run_python(source: str, limits: Limits = Limits()) -> Outcome:
    """Run ``python -I`` on ``source`` inside the sandbox. Never raises for the program's misbehaviour;
    a failure of the sandbox itself (bwrap missing, a mount refused) is an Outcome with status "error"."""
    start = time.monotonic()
    try:
        return _execute(source, limits)
    except Exception as exc:  # noqa: BLE001 - the caller gets an Outcome, never the sandbox's exception
        return Outcome("error", None, "", f"sandbox: {type(exc).__name__}: {exc}", time.monotonic() - start)


class SandboxPool:
    """Runs many programs at once, ``workers`` sandboxes at a time. Each run is bounded by its wall-clock
    limit (plus the kill grace), so one hung program delays only its own slot."""

    def __init__(self, workers: int = 2, limits: Limits = Limits()):
        self.workers = max(1, workers)
        self.limits = limits

    def run_all(self, sources: list[str]) -> list[Outcome]:
        """Outcomes in the same order as ``sources``; a hung program ends as "timeout"; never raises for a
        program's misbehaviour."""
        if not sources:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(sources)),
                                thread_name_prefix="sandbox") as pool:
            return list(pool.map(lambda src: run_python(src, self.limits), sources))
