"""The sandbox against an adversarial corpus: each case asserts the outcome and that the host is untouched."""
from __future__ import annotations

import os
import secrets
import socket
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bench.execution.sandbox import Limits, Sandbox, detect_isolation

FAST = Limits(wall_seconds=4.0, cpu_seconds=3)
STRONG = detect_isolation() != "process-group"
needs_namespaces = pytest.mark.skipif(not STRONG, reason="this platform gives the sandbox no namespaces")


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(FAST, workers=2)


def run(sandbox: Sandbox, source: str):
    return sandbox.run(textwrap.dedent(source))


def survivors(marker: str) -> list[int]:
    """Host processes whose command line carries `marker`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


def sleeper(marker: str) -> str:
    """Source that replaces the current process by a long sleep whose command line carries `marker`."""
    return f"os.execv({sys.executable!r}, [{sys.executable!r}, '-c', 'import time; time.sleep(60)', {marker!r}])"


def test_honest_programs(sandbox: Sandbox) -> None:
    assert run(sandbox, "def f(): return 1\nassert f() == 1\n").status == "passed"
    assert run(sandbox, "import numpy as np\nassert np.arange(4).sum() == 6\n").status == "passed"
    failed = run(sandbox, "assert 1 == 2\n")
    assert (failed.status, failed.error_type) == ("failed", "AssertionError")
    broken = run(sandbox, "def f(:\n")
    assert (broken.status, broken.error_type) == ("error", "SyntaxError")
    assert run(sandbox, "raise KeyError('x')\n").error_type == "KeyError"


def test_outcome_records_isolation(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "pass\n")
    assert outcome.isolation == sandbox.isolation
    assert outcome.duration > 0


def test_infinite_loop_times_out(sandbox: Sandbox) -> None:
    started = time.perf_counter()
    outcome = run(sandbox, "while True:\n    pass\n")
    assert outcome.status == "timeout"
    assert time.perf_counter() - started < FAST.wall_seconds + 5


def test_cpu_limit() -> None:
    outcome = Sandbox(Limits(wall_seconds=20, cpu_seconds=1), workers=1).run("while True:\n    pass\n")
    assert (outcome.status, outcome.error_type) == ("timeout", "CPUTimeLimit")


def test_sigterm_ignoring_loop_is_killed(sandbox: Sandbox) -> None:
    marker = "sbx-" + secrets.token_hex(6)
    outcome = run(sandbox, f"""
        import os, signal
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            {sleeper(marker)}
        while True:
            pass
        """)
    assert outcome.status == "timeout"
    assert survivors(marker) == []


def test_fork_bomb(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "import os\nwhile True:\n    os.fork()\n")
    assert outcome.status in ("error", "timeout")
    assert run(sandbox, "pass\n").status == "passed"  # the next program in the slot is unaffected


def test_memory_bomb(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "x = bytearray(16 << 30)\n")
    assert (outcome.status, outcome.error_type) == ("error", "MemoryError")


def test_busy_child_does_not_survive(sandbox: Sandbox) -> None:
    marker = "sbx-" + secrets.token_hex(6)
    outcome = run(sandbox, f"""
        import os
        if os.fork() == 0:
            {sleeper(marker)}
        assert True
        """)
    assert outcome.status == "passed"
    time.sleep(0.2)
    assert survivors(marker) == []


@needs_namespaces
def test_detached_grandchild_does_not_survive(sandbox: Sandbox) -> None:
    marker = "sbx-" + secrets.token_hex(6)
    outcome = run(sandbox, f"""
        import os
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                {sleeper(marker)}
            os._exit(0)
        os.wait()
        """)
    assert outcome.status == "passed"
    time.sleep(0.2)
    assert survivors(marker) == []


@needs_namespaces
def test_cannot_write_or_delete_outside(sandbox: Sandbox, tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = Path("/tmp") / f"sbx-planted-{secrets.token_hex(6)}"
    outcome = run(sandbox, f"""
        import os, pathlib
        for attempt in (lambda: os.remove({str(victim)!r}),
                        lambda: open({str(victim)!r}, "w").write("gone"),
                        lambda: open({str(tmp_path / "new.txt")!r}, "w").write("x"),
                        lambda: open(os.path.expanduser("~/.bashrc"), "a").write("x")):
            try:
                attempt()
            except OSError:
                pass
        open({str(planted)!r}, "w").write("x")  # the private /tmp: allowed, gone afterwards
        """)
    assert outcome.status == "passed"
    assert victim.read_text() == "precious"
    assert not (tmp_path / "new.txt").exists()
    assert not planted.exists()


def test_clean_environment(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sbx-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("FORGETBENCH_TEST_SECRET", secret)
    outcome = run(sandbox, f"""
        import os, glob
        assert {secret!r} not in repr(os.environ)
        for path in glob.glob("/proc/*/environ"):
            try:
                assert {secret!r}.encode() not in open(path, "rb").read(), path
            except OSError:
                pass
        assert os.getcwd() != {os.getcwd()!r}
        assert os.environ["HOME"] != {os.environ.get("HOME", "")!r}
        """)
    assert outcome.status == "passed", outcome


@needs_namespaces
def test_no_network(sandbox: Sandbox) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.5)
    port = server.getsockname()[1]
    outcome = run(sandbox, f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=2)
        """)
    assert outcome.status == "error" and outcome.error_type in ("OSError", "ConnectionRefusedError")
    with pytest.raises(socket.timeout):
        server.accept()
    server.close()
    try:  # a public address: only a machine that reaches it outside the sandbox can show the sandbox blocks it
        socket.create_connection(("93.184.216.34", 80), timeout=2).close()
    except OSError:
        return
    outcome = run(sandbox, "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=2)\n")
    assert outcome.status == "error"


def test_early_exit_is_not_a_pass(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "import os\nos._exit(0)\nassert False\n")
    assert (outcome.status, outcome.error_type) == ("error", "NoVerdict")
    assert run(sandbox, "import sys\nsys.exit(0)\n").status == "error"


def test_fake_success_marker(sandbox: Sandbox) -> None:
    outcome = run(sandbox, """
        import os, sys
        for fd in range(3, 64):
            try:
                os.write(fd, b"passed " + b"0" * 32)
            except OSError:
                pass
        print("passed"); print("All tests passed"); sys.stdout.flush()
        os._exit(0)
        """)
    assert outcome.status != "passed"


def test_monkey_patched_harness(sandbox: Sandbox) -> None:
    outcome = run(sandbox, """
        import builtins, os, sys
        real_write = os.write
        os.write = lambda fd, data: len(data) if data.startswith((b"failed", b"error")) else real_write(fd, data)
        os._exit = lambda status: None
        sys.exit = lambda *a: None
        builtins.AssertionError = type("Nope", (Exception,), {})
        assert 1 == 2
        """)
    assert outcome.status == "failed"


def test_exit_from_atexit_hook(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "import atexit, os\natexit.register(lambda: os._exit(0))\nassert False\n")
    assert outcome.status == "failed"
    outcome = run(sandbox, "import atexit, sys\natexit.register(lambda: sys.exit(3))\nassert True\n")
    assert outcome.status == "passed"


def test_huge_output(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert outcome.status == "error"
    assert len(outcome.stderr_tail) <= 1000


def test_cannot_raise_its_limits(sandbox: Sandbox) -> None:
    outcome = run(sandbox, "import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))\n")
    assert (outcome.status, outcome.error_type) == ("error", "ValueError")


@needs_namespaces
def test_cannot_kill_the_host(sandbox: Sandbox) -> None:
    outcome = run(sandbox, f"import os, signal\nos.kill(-1, signal.SIGKILL)\nos.kill({os.getpid()}, signal.SIGKILL)\n")
    assert outcome.status == "error"  # and this test process is still here


def test_run_many_keeps_order(sandbox: Sandbox) -> None:
    sources = [f"assert {i} % 2 == 0\n" for i in range(6)]
    assert [o.status for o in sandbox.run_many(sources)] == ["passed", "failed"] * 3


def test_process_group_fallback_still_judges() -> None:
    weak = Sandbox(FAST, workers=1, isolation="process-group")
    assert [weak.run(s).status for s in ("assert True\n", "assert False\n", "import os\nos._exit(0)\n")] == \
        ["passed", "failed", "error"]
    assert weak.run("while True:\n    pass\n").status == "timeout"


@needs_namespaces
def test_python_installed_under_tmp_stays_importable_and_read_only(sandbox: Sandbox, tmp_path, monkeypatch) -> None:
    """A checkout (and its virtualenv) cloned under /tmp: the private /tmp must not hide it."""
    import bench.execution.sandbox

    lib = tmp_path / "site-packages"
    lib.mkdir()
    (lib / "probe_module.py").write_text("VALUE = 42\n")
    for d in (tmp_path, lib):
        d.chmod(0o755)
    monkeypatch.setattr(bench.execution.sandbox, "_python_paths", lambda: [str(lib)])
    outcome = run(sandbox, f"""
        import sys
        sys.path.append({str(lib)!r})
        import probe_module
        assert probe_module.VALUE == 42
        try:
            open({str(lib / "written")!r}, "w")
        except OSError:
            pass
        else:
            raise AssertionError("wrote into the Python installation")
        """)
    assert (outcome.status, outcome.error_type) == ("passed", None), outcome.stderr_tail
    assert not (lib / "written").exists()
