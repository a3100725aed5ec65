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
