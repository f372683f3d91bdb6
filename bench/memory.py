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
