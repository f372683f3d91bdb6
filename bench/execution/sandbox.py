"""The sandbox: the only way model-written code is ever executed. Every program is treated as hostile.

One program runs in its own process group under resource limits (wall time, CPU seconds, address space,
processes, file size, open files) with a clean environment. Where Linux allows it (`unshare`), it also gets
its own network namespace (no network at all), PID namespace (when the program ends, the kernel kills every
process it started, daemonised grandchildren included), mount namespace with private tmpfs over /tmp,
/var/tmp and /dev/shm (its working directory, gone with the namespace), and, when we are root, an unprivileged
uid of its own (61000 + worker slot), so it can neither write the user's files nor read other processes'
environments. `Sandbox.isolation` says which of these the platform gave; every outcome records it.

The verdict never comes from what the program prints: the harness, a few trusted lines run before the
program, receives a per-run secret token on stdin and writes it to a private pipe only after the program
and its tests ran to the end without an exception, then leaves with `os._exit` (no atexit hook runs). A
program that exits early, prints a fake marker or fakes its exit status has no token and does not pass.

What it does not protect against (docs/sandbox.md): kernel exploits, code written to attack this
harness specifically (it runs in the harness's own interpreter, so it could dig the token out of the
harness's frames), `__eq__` tricks that make a wrong answer compare equal to the expected one, and, on
platforms without namespaces, the network and detached processes. A container or VM is the stronger choice
for untrusted models at scale.
"""
from __future__ import annotations

import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

OUTCOMES = ("passed", "failed", "timeout", "error")
SANDBOX_VERSION = 2  # part of every execution cache key
UID_BASE = 61000


@dataclass(frozen=True)
class Limits:
    """Per-program limits; the defaults let honest HumanEval solutions (numpy imported) pass."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 2 << 30  # address space
    processes: int = 16
    file_bytes: int = 16 << 20
    open_files: int = 64


@dataclass(frozen=True)
class Outcome:
    status: str  # one of OUTCOMES
    error_type: str | None
    duration: float
    isolation: str
    stderr_tail: str = ""


HARNESS = Path(__file__).with_name("sandbox_harness.py")


def _clean_env(home: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home,
            "PYTHONDONTWRITEBYTECODE": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1"}


def _namespace_prefix(root: bool) -> list[str]:
    user = [] if root else ["--user", "--map-root-user"]
    return ["unshare", *user, "--net", "--pid", "--mount", "--fork", "--kill-child", "--mount-proc"]


@cache
def detect_isolation() -> str:
    """`namespaces` (root: own net/pid/mount namespaces and uid), `user-namespaces` (same, but the program
    keeps the user's uid), or `process-group` (limits only: no network isolation, and a process that leaves
    the group can outlive the program). Probed once per process by running a program in the strongest mode."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "process-group"
    candidate = "namespaces" if os.geteuid() == 0 else "user-namespaces"
    probe = Sandbox(Limits(wall_seconds=60), workers=1, isolation=candidate).run("import numpy, socket")
    return candidate if probe.status == "passed" else "process-group"


@cache
def _site_packages() -> tuple[str, ...]:
    import site
    return tuple(p for p in site.getsitepackages() if os.path.isdir(p))


def _python_paths() -> list[str]:
    """What the sandboxed interpreter must reach: its installation and site-packages."""
    paths = {sys.base_prefix, sys.prefix, os.path.dirname(sys.executable), *_site_packages()}
    return sorted({os.path.realpath(p) for p in paths if os.path.isdir(p)})


class Sandbox:
    """Runs programs under `limits`, in parallel up to `workers` (default: the cores this process may use)."""

    def __init__(self, limits: Limits = Limits(), workers: int | None = None, isolation: str | None = None):
        self.limits = limits
        self.workers = workers or len(os.sched_getaffinity(0))
        self.isolation = isolation or detect_isolation()
        self._slots = list(range(self.workers))
        self._lock = threading.Lock()

    def settings(self) -> dict:
        """What decides an outcome besides the program: part of the execution cache key."""
        return {"limits": asdict(self.limits), "isolation": self.isolation, "sandbox": SANDBOX_VERSION}

    def run_many(self, sources: list[str], on_done=None) -> list[Outcome]:
        def one(source: str) -> Outcome:
            outcome = self.run(source)
            if on_done is not None:
                on_done(outcome)
            return outcome
        with ThreadPoolExecutor(self.workers) as pool:
            return list(pool.map(one, sources))

    def run(self, source: str) -> Outcome:
        with self._lock:
            slot = self._slots.pop() if self._slots else self.workers
        try:
            return self._run(source, slot)
        finally:
            with self._lock:
                self._slots.append(slot)

    def _rlimits(self) -> dict[str, int]:
        lim = self.limits
        return {"RLIMIT_CPU": lim.cpu_seconds, "RLIMIT_AS": lim.memory_bytes, "RLIMIT_NPROC": lim.processes,
                "RLIMIT_FSIZE": lim.file_bytes, "RLIMIT_NOFILE": lim.open_files, "RLIMIT_CORE": 0}

    def _run(self, source: str, slot: int) -> Outcome:
        root = os.geteuid() == 0
        namespaced = self.isolation in ("namespaces", "user-namespaces")
        uid = UID_BASE + slot if self.isolation == "namespaces" else None
        token = secrets.token_hex(16)
        read_end, write_end = os.pipe()
        host_dir = tempfile.mkdtemp(prefix="forgetbench-sandbox-")
        try:
            work = os.path.join(host_dir, "work")
            os.mkdir(work, 0o700)
            spec = {"verdict_fd": write_end, "token": token, "source": source, "private_tmp": namespaced,
                    "uid": uid, "expose": _python_paths(), "rlimits": self._rlimits(),
                    "site_packages": _site_packages()}
            if not namespaced:  # no namespace: the host's rlimits must hold, NPROC included (it is per uid)
                spec["rlimits"].pop("RLIMIT_NPROC")
            prefix = _namespace_prefix(root) if namespaced else []
            with open(os.path.join(host_dir, "stdout"), "wb") as out, \
                    open(os.path.join(host_dir, "stderr"), "w+b") as err:
                started = time.perf_counter()
                proc = subprocess.Popen(
                    [*prefix, sys.executable, "-I", "-S", str(HARNESS)], stdin=subprocess.PIPE, stdout=out, stderr=err,
                    pass_fds=(write_end,), cwd=work, env=_clean_env("/tmp/work" if namespaced else work),
                    start_new_session=True)
                os.close(write_end)
                write_end = -1
                timed_out = False
                try:
                    proc.stdin.write(marshal.dumps(spec))
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
                try:
                    proc.wait(timeout=self.limits.wall_seconds)
                except subprocess.TimeoutExpired:
                    timed_out = True
                self._kill(proc)
                duration = time.perf_counter() - started
                err.seek(max(0, err.seek(0, os.SEEK_END) - 2000))
                stderr_tail = err.read().decode(errors="replace")
            os.set_blocking(read_end, False)
            try:
                verdict = os.read(read_end, 4096)
            except BlockingIOError:
                verdict = b""
        finally:
            os.close(read_end)
            if write_end != -1:
                os.close(write_end)
            shutil.rmtree(host_dir, ignore_errors=True)
        status, error_type = self._verdict(verdict, token, proc.returncode, timed_out)
        return Outcome(status, error_type, round(duration, 4), self.isolation, stderr_tail[-1000:])

    def _kill(self, proc: subprocess.Popen) -> None:
        """Kill everything the program started, and return only once it is gone. In a PID namespace, killing
        `unshare` kills the namespace's init and with it every process inside; otherwise kill the process
        group, whose members die asynchronously (and stay members until reaped): wait for the group to empty."""
        for target in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        proc.wait()
        deadline = time.monotonic() + 5
        while _live_members(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    @staticmethod
    def _verdict(verdict: bytes, token: str, returncode: int, timed_out: bool) -> tuple[str, str | None]:
        if verdict == b"passed " + token.encode() and returncode == 0 and not timed_out:
            return "passed", None
        if timed_out:
            return "timeout", "WallTimeLimit"
        kind, _, name = verdict.decode(errors="replace").partition(" ")
        if kind == "timeout":
            return "timeout", name
        if kind == "failed":
            return "failed", name or "AssertionError"
        if kind == "error" and name:
            return "error", name
        if returncode < 0:  # seen without namespaces; `unshare` does not pass the signal on
            try:
                return "error", signal.Signals(-returncode).name
            except ValueError:
                return "error", f"signal {-returncode}"
        return "error", "NoVerdict"  # it exited before its tests ended, or was killed


def _live_members(pgid: int) -> bool:
    """Whether a process of group `pgid` is still running (a zombie has died: only its reaping is pending)."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        state, _, group = stat[stat.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state != "Z":
            return True
    return False


def isolation_notes(isolation: str) -> str:
    return {
        "namespaces": "own network, PID and mount namespaces, private tmpfs, unprivileged uid",
        "user-namespaces": "own network, PID and mount namespaces, private tmpfs; runs with the user's uid, "
                           "so it can write the user's files",
        "process-group": "WEAKER: resource limits and a process group only; the network is reachable, a process "
                         "that leaves the group can outlive the program, and the user's files are writable",
    }[isolation]

