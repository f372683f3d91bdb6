"""bench.memory: each window reports its own peak, windows nest, a later window does not inherit an earlier peak."""
import mmap
import platform
import subprocess
import sys

import pytest

from bench.memory import PeakRSS, peak_rss_mib

MIB = 2**20
resettable = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark resets on Linux only")


def allocate(mib: int) -> None:
    """`mib` of new pages made resident, then given back: an anonymous mapping, so no allocator can serve it from
    memory the process already holds (in a long test session malloc may)."""
    block = mmap.mmap(-1, mib * MIB)
    for offset in range(0, mib * MIB, 4096):
        block[offset] = 1
    block.close()


@resettable
def test_each_window_sees_its_own_peak_nested_or_after_another():
    with PeakRSS() as outer:
        allocate(300)
        with PeakRSS() as inner:
            pass
        with PeakRSS() as second:
            allocate(100)
    with PeakRSS() as after:
        pass
    assert outer.mib - inner.mib > 250, "an inner window does not inherit the outer's earlier peak"
    assert second.mib - inner.mib > 60
    assert outer.mib >= second.mib, "an inner window's reset does not lose the outer peak"
    assert outer.mib - after.mib > 250, "a later window does not inherit an earlier peak"
    assert peak_rss_mib() < outer.mib - 250, "leaving a window does not restore an outer peak"


PASSES = """
import resource, torch
from bench.memory import keep_freed_memory
assert keep_freed_memory()
def forward_pass():  # ten 18 MiB activations, touched, then freed
    blocks = [torch.empty(18 << 20, dtype=torch.uint8).fill_(1) for _ in range(10)]
for _ in range(3):
    forward_pass()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
forward_pass()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_later_pass_reuses_the_memory_an_earlier_one_freed():
    """Without it, glibc returned the freed top of its heap to the kernel: 4,608 fresh pages a pass here, each a
    page fault, millions in a prefill. A fresh process: the allocator's settings are process-wide."""
    faults = subprocess.run([sys.executable, "-c", PASSES], capture_output=True, text=True, check=True).stdout
    assert int(faults) < 1000, f"{faults.strip()} page faults in a pass whose memory an earlier pass freed"
