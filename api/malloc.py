"""glibc's malloc, told to keep freed memory for the next request instead of handing it back to the kernel.

A request's NumPy temporaries are hundreds of kilobytes to megabytes: a parsed CSV block, a 1024-row batch's
activations, a JSON body's array. glibc serves blocks that large with mmap, or trims them off the top of its
heap once freed, so the next request writes to fresh pages again, and each 4 KiB page costs a page fault on
its first write. A 60,000-row CSV upload took 440,000 page faults and about 1 s of system time, more than
the parsing itself; with a fixed mmap threshold and a trim threshold of NN_MALLOC_KEEP_MB it takes a few
hundred and 0.1 s (bench/data_path.py measures both settings).

The price is memory held: each malloc arena keeps up to NN_MALLOC_KEEP_MB freed at its top (glibc's own
sliding thresholds already reach 64 MiB once a 32 MiB block has been freed). NN_MALLOC_KEEP_MB=0 leaves
glibc's defaults. Where the C library is not glibc (macOS, Alpine's musl) this does nothing.
"""

import ctypes
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 16 * 1024 * 1024  # blocks from this size up still get their own mapping, returned when freed


def keep_freed_memory(keep_mb: float) -> bool:
    """Apply NN_MALLOC_KEEP_MB to this process; True when glibc took it."""
    if keep_mb <= 0:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    keep = int(min(keep_mb * 1024 * 1024, 2**31 - 1))
    taken = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, keep) == 1
    if not taken:
        log.warning("malloc did not take NN_MALLOC_KEEP_MB=%s; freed memory goes back to the kernel at once", keep_mb)
    return taken
