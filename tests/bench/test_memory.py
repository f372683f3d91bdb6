"""bench.memory: each window reports its own peak, windows nest, a later window does not inherit an earlier peak."""
import mmap
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
