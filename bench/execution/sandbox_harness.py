"""The trusted first lines of every sandboxed interpreter (bench/execution/sandbox.py runs this file as a script; never import it).

Reads its spec from stdin, then, as root inside its own namespaces where it has them: mounts private tmpfs
over /tmp, /var/tmp and /dev/shm; hides every directory the sandbox uid could not enter anyway (a 0700 home,
say) behind a tmpfs that shows only the path to the Python installation; drops to the sandbox uid; applies the
resource limits; runs the program; and writes the verdict to a private pipe, the token only after a clean run.
"""
import _signal  # not `signal`: its enum import alone costs more than a HumanEval program's run
import marshal  # not `json`, for the same reason
import os
import resource
import sys

MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MNT_DETACH = 1, 32, 4096, 16384, 2


def _mount(libc, source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    if libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        import ctypes
        raise OSError(ctypes.get_errno(), f"mount {source} on {target}")


def _private_tmp(libc, keep: list[str]) -> None:
    """A fresh tmpfs on each temporary directory. Paths of `keep` inside one (a virtualenv cloned under /tmp)
    are bind-mounted back, read-only, from the directory the tmpfs covers (reached through an fd opened before)."""
    for d in ("/tmp", "/var/tmp", "/dev/shm"):
        if not os.path.isdir(d):
            continue
        inside = [p[len(d) + 1:] for p in keep if p.startswith(d + "/")]
        covered = os.open(d, os.O_RDONLY | os.O_DIRECTORY) if inside else -1
        _mount(libc, "tmpfs", d, "tmpfs", 0, "size=64m,mode=1777")
        for rel in inside:
            target = os.path.join(d, rel)
            os.makedirs(target, mode=0o755, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{covered}/{rel}", target, None, MS_BIND | MS_REC, None)
            _mount(libc, "none", target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        if covered != -1:
            os.close(covered)


def _expose(libc, paths: list[str]) -> None:
    """Make each path reachable by an unprivileged uid: every ancestor closed to others is replaced by a tmpfs
    holding only the next step of the path, bind-mounted from the original."""
    for path in paths:
        parts = path.strip("/").split("/")
        for depth in range(len(parts) - 1):
            parent = "/" + "/".join(parts[:depth + 1])
            if os.stat(parent).st_mode & 0o001:
                continue
            stash = f"/tmp/.expose{depth}"
            os.mkdir(stash)
            _mount(libc, parent, stash, None, MS_BIND | MS_REC, None)
            _mount(libc, "tmpfs", parent, "tmpfs", 0, "size=1m,mode=0755")
            child = parts[depth + 1]
            os.mkdir(os.path.join(parent, child), 0o755)
            _mount(libc, os.path.join(stash, child), os.path.join(parent, child), None, MS_BIND | MS_REC, None)
            libc.umount2(stash.encode(), MNT_DETACH)
            os.rmdir(stash)


def main() -> None:
    spec = marshal.loads(sys.stdin.buffer.read())
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    fd, token, source, uid = spec["verdict_fd"], spec["token"].encode(), spec["source"], spec["uid"]
    sys.path.extend(spec["site_packages"])  # run with -S: skipping the .pth hooks of site saves most of startup
    if spec["private_tmp"]:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        _private_tmp(libc, spec["expose"])
        if uid is not None:
            _expose(libc, spec["expose"])
        os.mkdir("/tmp/work", 0o700)
        if uid is not None:
            os.chown("/tmp/work", uid, uid)
        os.chdir("/tmp/work")
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    for name, value in spec["rlimits"].items():
        # CPU: SIGXCPU at the soft limit (reported below), SIGKILL a second later if the program ignores it
        resource.setrlimit(getattr(resource, name), (value, value + 1 if name == "RLIMIT_CPU" else value))
    del spec
    # Bound before the program runs: it may replace os.write, os._exit or builtins.AssertionError.
    me, getpid, write, exit_, assertion_error = os.getpid(), os.getpid, os.write, os._exit, AssertionError
    stdout, stderr = sys.stdout, sys.stderr

    def report(line: bytes, status: int) -> None:
        if getpid() != me:  # a forked child of the program: only the program's own process reports
            exit_(status)
        try:
            stdout.flush()
            stderr.flush()
        except BaseException:
            pass
        write(fd, line)
        exit_(status)  # no atexit hook, no finaliser can change the outcome now

    _signal.signal(_signal.SIGXCPU, lambda *_: report(b"timeout CPUTimeLimit", 1))
    try:
        exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
    except assertion_error:
        report(b"failed AssertionError", 1)
    except BaseException as e:
        report(b"error " + type(e).__name__.encode(errors="replace")[:100], 1)
    report(b"passed " + token, 0)


main()
