"""Peak resident memory of a stage inside one process. Linux keeps a high-water mark (VmHWM) that a process may reset
(writing 5 to /proc/self/clear_refs), so a study that trains and evaluates in one process still reports each stage's
own peak; windows nest (a task inside an evaluation inside a study stage). Where the mark cannot be reset or read
(not Linux, a restricted /proc), a window reports the process's lifetime peak: an upper bound, never an undercount."""
from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

_STATUS, _CLEAR_REFS, _MEMINFO = Path("/proc/self/status"), Path("/proc/self/clear_refs"), Path("/proc/meminfo")
_open: list[PeakRSS] = []


def peak_rss_mib() -> float:
    """The high-water mark since its last reset (else the lifetime peak), in MiB."""
    try:
        return int(re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def available_bytes() -> int | None:
    """The memory the kernel says a new allocation can take without swapping (MemAvailable); None where unknown."""
    try:
        return int(re.search(r"MemAvailable:\s+(\d+) kB", _MEMINFO.read_text()).group(1)) * 1024
    except (OSError, AttributeError):
        return None


def _reset() -> None:
    mark = peak_rss_mib()
    for window in _open:
        window.mib = max(window.mib, mark)
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        pass


class PeakRSS:
    """`with PeakRSS() as peak: ...`, then `peak.mib`: the peak resident memory inside the block, in MiB."""

    def __init__(self) -> None:
        self.mib = 0.0

    def __enter__(self) -> PeakRSS:
        _reset()
        _open.append(self)
        return self

    def __exit__(self, *exc) -> None:
        self.mib = round(max(self.mib, peak_rss_mib()), 1)
        _open.remove(self)


KEPT_FREE_BYTES = 256 << 20  # freed heap memory glibc keeps for reuse instead of returning it to the kernel


def keep_freed_memory() -> bool:
    """Have glibc keep up to KEPT_FREE_BYTES of freed memory, and serve blocks up to 32 MiB from its heap.

    By default glibc hands a freed block back to the kernel once its free top passes about twice the largest block
    freed so far, so each forward pass's activations come back as fresh pages, a page fault per 4 KiB on first touch:
    on our virtual machines the 1.5B's prefill of 32 HumanEval prompts took 15.8-16.9 s with 2.4-3.7 million faults,
    12.4-12.7 s with none when kept (docs/engine.md). Process-wide and idempotent; False where there is no glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, KEPT_FREE_BYTES))
