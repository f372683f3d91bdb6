"""bench.memory: each window reports its own peak, windows nest, a later window does not inherit an earlier peak."""
import sys

import pytest

from bench.memory import PeakRSS, peak_rss_mib

MIB = 2**20
resettable = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the high-water mark resets on Linux only")


def allocate(mib: int) -> None:
    block = b"\x01" * (mib * MIB)  # written, so resident
    del block


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
