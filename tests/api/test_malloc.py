"""NN_MALLOC_KEEP_MB (api/malloc.py): freed blocks of a few megabytes are reused, not faulted in afresh."""
import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Temporaries the size of a parsed CSV block or a 1024-row batch's activations, allocated, written and freed
# as request after request does; the page faults of the process while it runs
LOOP = """
import json, resource, sys
import numpy as np
from api.malloc import keep_freed_memory
taken = keep_freed_memory(float(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm up: the heap grows once
    np.ones((4, 1 << 20), np.uint8) + 1
before = faults()
for _ in range(50):
    a = np.ones((4, 1 << 20), np.uint8) + 1  # 4 MiB, twice
    del a
print(json.dumps({"taken": taken, "faults": faults() - before}))
"""


def faults(keep_mb: float) -> dict:
    done = subprocess.run([sys.executable, "-c", LOOP, str(keep_mb)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_megabytes_are_reused_instead_of_faulted_in_again():
    kept, default = faults(64), faults(0)
    assert kept["taken"] and not default["taken"]
    assert default["faults"] > 50 * 512  # glibc's defaults: a 4 MiB block maps up to 1,024 fresh pages
    assert kept["faults"] < default["faults"] / 10, (kept, default)


# Eight threads allocate at once and wait; glibc's malloc_stats then prints one "Arena k:" block per arena
ARENAS = """
import ctypes, sys, threading
import numpy as np
from api.malloc import keep_freed_memory
keep_freed_memory(64, int(sys.argv[1]))
held = threading.Barrier(9)
def work():
    block = np.ones(1 << 20, np.uint8)
    held.wait()
    held.wait()
threads = [threading.Thread(target=work) for _ in range(8)]
for thread in threads:
    thread.start()
held.wait()
ctypes.CDLL(None).malloc_stats()
held.wait()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_threads_share_a_bounded_number_of_arenas():
    """glibc gave each thread an arena of its own (up to 8 per core), each keeping up to NN_MALLOC_KEEP_MB freed:
    after bursts of 16 concurrent requests an idle API process held 0.47-0.50 GB (0.24-0.37 GB with two arenas)."""
    def arenas(limit: int) -> int:
        done = subprocess.run([sys.executable, "-c", ARENAS, str(limit)], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, check=True)
        return done.stderr.count("Arena ")

    assert arenas(0) == 9 and arenas(2) == 2  # 0: glibc's default, an arena for the main thread and each of eight
