"""Fixtures of the service tests: apps on a temporary data dir, and polling with deadlines."""

import time
import tracemalloc
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.settings import Settings

TERMINAL = {"succeeded", "failed", "cancelled"}

IRIS = {"model_id": "iris", "layer_sizes": [4, 8, 3], "activations": ["relu", "softmax"], "seed": 0}
X4 = [[5.1, 3.5, 1.4, 0.2], [4.9, 3.0, 1.4, 0.2], [7.0, 3.2, 4.7, 1.4],
      [6.4, 3.2, 4.5, 1.5], [6.3, 3.3, 6.0, 2.5], [5.8, 2.7, 5.1, 1.9]]
Y3 = [0, 0, 1, 1, 2, 2]


def settings_for(data_dir: Path, **overrides) -> Settings:
    values = {"data_dir": data_dir, "workers": 1, "poll_interval": 0.05, "progress_interval": 0.05, **overrides}
    return Settings(**values)


@contextmanager
def running_app(data_dir: Path, **overrides):
    """A TestClient whose lifespan (and so the worker processes) runs for the block."""
    with TestClient(create_app(settings_for(data_dir, **overrides))) as client:
        yield client


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One app with one worker per test module."""
    with running_app(tmp_path_factory.mktemp("data")) as c:
        yield c


@pytest.fixture(scope="module")
def idle_client(tmp_path_factory):
    """An app without workers: queued jobs stay queued, so waiting states can be inspected."""
    with running_app(tmp_path_factory.mktemp("data"), workers=0) as c:
        yield c


def wait_for(fetch, done, timeout: float = 30.0, interval: float = 0.02):
    """Calls fetch() until done(result) holds; fails after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if done(result):
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s; last result: {result}")
        time.sleep(interval)


def wait_job(client, job_id: str, statuses=TERMINAL, timeout: float = 30.0) -> dict:
    return wait_for(lambda: client.get(f"/jobs/{job_id}").json(), lambda j: j["status"] in statuses, timeout)


def create(client, **overrides) -> dict:
    body = {**IRIS, **overrides}
    response = client.post("/models", json=body)
    assert response.status_code == 201, response.text
    return response.json()


REDIS_URL = __import__("os").environ.get("NN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def redis_available() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=0.5).ping())
    except Exception:
        return False


@contextmanager
def backend_app(backend: str, data_dir: Path, keep_data: bool = False, **overrides):
    """A TestClient on either backend with no workers: tests run jobs with `run_queued`, the workers' own code.
    The redis one uses NN_TEST_REDIS_URL under a key prefix and queue of its own, deleted afterwards
    unless ``keep_data`` (a later app on the same ``redis_prefix`` then sees them)."""
    if backend == "redis":
        if not redis_available():
            pytest.skip(f"no Redis at {REDIS_URL}")
        import uuid

        prefix = overrides.pop("redis_prefix", f"t-{uuid.uuid4().hex[:8]}")
        overrides = {"backend": "redis", "redis_url": REDIS_URL, "redis_prefix": prefix,
                     "redis_queue": f"{prefix}-training", **overrides}
    app = create_app(settings_for(data_dir, workers=0, **overrides))
    try:
        with TestClient(app) as c:
            yield c
    finally:
        if backend == "redis" and not keep_data:
            store = app.state.service.store
            store.reset()
            store.redis.delete(f"rq:queue:{overrides['redis_queue']}")


def run_queued(client, worker_id: str = "test-worker") -> list[dict]:
    """Claims and runs every runnable training job in this process (api.worker.run_job, as a worker would)."""
    import threading

    from api.worker import run_job

    store, settings = client.app.state.service.store, client.app.state.settings
    done = []
    while (job := store.claim_job(worker_id)) is not None:
        done.append(run_job(store, job, settings, threading.Event()))
    return [client.get(f"/jobs/{j.job_id}").json() for j in done]


def npz_with_zeros(path, members: dict, level: int = 1) -> None:
    """An NPZ of deflated members, each ``name: array`` or ``name: (shape, dtype)`` of zeros, written 4 MB at a
    time: a 1 MB file that holds hundreds of MB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, spec in members.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                if isinstance(spec, np.ndarray):
                    np.lib.format.write_array(handle, spec)
                    continue
                shape, dtype = spec
                np.lib.format.write_array_header_1_0(handle, {"descr": np.dtype(dtype).str, "fortran_order": False,
                                                              "shape": shape})
                left = int(np.prod(shape)) * np.dtype(dtype).itemsize
                zeros = bytes(4 << 20)
                while left:
                    handle.write(zeros[:min(left, len(zeros))])
                    left -= min(left, len(zeros))


def peak_bytes(function, *args, **kwargs):
    """``function(*args, **kwargs)`` and the most memory this process held at once while it ran, in every thread
    (NumPy's arrays included: they are traced)."""
    tracemalloc.start()
    try:
        result = function(*args, **kwargs)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
