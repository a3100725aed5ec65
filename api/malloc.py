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

glibc gives threads up to 8 arenas per core, and request threads each take one: after bursts of concurrent
requests an idle API process held 0.6-1.1 GB. NN_MALLOC_ARENAS (default: one per core) bounds them; the
threads compute under the GIL or in BLAS, so they rarely wait for an arena.
"""

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 16 * 1024 * 1024  # blocks from this size up still get their own mapping, returned when freed


def keep_freed_memory(keep_mb: float, arenas: int | None = 0) -> bool:
    """Apply NN_MALLOC_KEEP_MB and NN_MALLOC_ARENAS (None: one per core; 0: glibc's default) to this process, before
    its threads start; True when glibc took the first."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # no glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    arenas = (os.cpu_count() or 1) if arenas is None else arenas
    if arenas > 0 and mallopt(M_ARENA_MAX, arenas) != 1:
        log.warning("malloc did not take NN_MALLOC_ARENAS=%s", arenas)
    if keep_mb <= 0:
        return False
    keep = int(min(keep_mb * 1024 * 1024, 2**31 - 1))
    taken = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, keep) == 1
    if not taken:
        log.warning("malloc did not take NN_MALLOC_KEEP_MB=%s; freed memory goes back to the kernel at once", keep_mb)
    return taken
