"""The allocator setting of large fabrics: freed 2 MB arrays are reused without page faults."""

import sys

import numpy as np
import pytest

from clustersim.sim.allocator import keep_large_blocks


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt only")
def test_large_temporaries_are_reused_without_page_faults():
    resource = pytest.importorskip("resource")
    if not keep_large_blocks():
        pytest.skip("not glibc")

    def step():
        # Four 2 MB temporaries alive at once, then freed, as in one coflow's solve: by
        # default glibc returns the freed heap top and faults it in again (about 100k faults
        # for 50 steps on this machine).
        arrays = [np.ones(1 << 18) for _ in range(4)]
        del arrays

    step()                          # warm the heap once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 50 * 4 * 512 / 20
