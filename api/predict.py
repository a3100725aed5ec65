"""Predictions of an API process across its cores.

Each API process gives BLAS one thread (NN_API_BLAS_THREADS), so that concurrent small requests each
compute on a core of their own instead of queueing for one BLAS thread pool. A single large request
would then use one core of several: ``predict`` splits its rows into as many parts as there are cores
and computes them side by side in threads (NumPy releases the GIL in matmul). 1024x784 rows through a
784-256-128-10 network: 4.1 ms on one thread, 2.5 ms split in two on 2 cores, the same as BLAS's own
two threads. Rows are independent in inference, so the outputs are those of one ``Network.predict``.
"""

import functools
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from neural_net import Network

from api.errors import InvalidInput, PayloadTooLarge

SPLIT_WORK = 16_000_000  # multiply-adds (rows x parameters) from which a prediction is split: about 0.3 ms of work
MIN_PART_ROWS = 64  # fewest rows of a part: BLAS is inefficient on fewer


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Helpers:
    """Threads computing the other parts of split predictions (the caller's thread computes the first). A part is
    only handed to an idle helper: under concurrent requests, each computes whole on its own thread as before,
    instead of queueing its parts behind other requests'."""

    def __init__(self, threads: int):
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nn-predict")
        self.idle = threading.BoundedSemaphore(threads)

    def take(self, wanted: int) -> int:
        """How many of ``wanted`` helpers are idle, now reserved (each ``run`` frees one)."""
        taken = 0
        while taken < wanted and self.idle.acquire(blocking=False):
            taken += 1
        return taken

    def run(self, fn, *args) -> Future:
        future = self.pool.submit(fn, *args)
        future.add_done_callback(lambda _: self.idle.release())
        return future


@functools.cache
def _helpers() -> _Helpers:
    return _Helpers(max(1, cores() - 1))


def predict(net: Network, x: np.ndarray) -> np.ndarray:
    """``net.predict(x)``, split across the idle cores when ``x`` is large. Overflow gives Inf or NaN, not a warning
    (callers refuse non-finite outputs)."""
    if x.shape[0] < 2 * MIN_PART_ROWS or x.shape[0] * net.n_params < SPLIT_WORK:  # most requests: no syscall for cores()
        return _predict(net, x)
    parts = min(cores(), x.shape[0] // MIN_PART_ROWS)
    if parts < 2:
        return _predict(net, x)
    helpers = _helpers()
    parts = 1 + helpers.take(parts - 1)
    if parts == 1:
        return _predict(net, x)
    bounds = np.linspace(0, x.shape[0], parts + 1).astype(int)
    others = [helpers.run(_predict, net, x[a:b]) for a, b in zip(bounds[1:-1], bounds[2:])]
    first = _predict(net, x[:bounds[1]])
    return np.concatenate([first, *(part.result() for part in others)])


def _predict(net: Network, x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # per thread: each part sets its own
        return net.predict(x)  # predict keeps no per-call state on the network: threads may share it


def check_finite(what: str, arrays: tuple, dtype: str) -> None:
    """Refuses (422) a computed result that overflowed: JSON has no Inf or NaN to answer with."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise InvalidInput(f"{what} overflowed {dtype} (Inf or NaN): the inputs or the model's weights are too large; "
                           "scale the inputs down (e.g. to mean 0, std 1) or check the weights with GET /models/{model_id}/weights")


def check_answer_size(rows: int, per_row: int, extra: int, limit: int, what: str = "outputs") -> None:
    """413 before computing an answer of more than NN_MAX_RESPONSE_VALUES numbers. The rows of a request are
    bounded, its answer was not: 10,000 one-number rows (a 70 KB body) through a [1, 1024] model answered 219 MB and
    took the API process from 80 MB to 1.2 GB, the JSON built on the event loop for a second."""
    values = rows * per_row + extra
    if values > limit:
        raise PayloadTooLarge(f"the answer would hold {values:,} numbers ({rows:,} rows x {per_row:,} {what} per row"
                              + (f" + {extra:,} gradients" if extra else "") + f"); at most {limit:,} "
                              "(NN_MAX_RESPONSE_VALUES): send fewer rows per request")
