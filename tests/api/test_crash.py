"""Crash safety: SIGKILL the server (and sometimes first its worker) at random points while jobs train
and samples are appended, 20 times over; after each restart the database opens and passes SQLite's
integrity check, no acknowledged sample is lost, none is duplicated, every model loads, and at the end
every job reaches a terminal state. NN_CRASH_REPS=100 runs it longer."""

import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from neural_net import Network
from tests.conftest import start_server, stop_server

REPS = int(os.environ.get("NN_CRASH_REPS", "20"))
BATCH = 5  # samples per append
TERMINAL = {"succeeded", "failed", "cancelled"}
ENV = {"NN_PROGRESS_INTERVAL": "0.02", "NN_POLL_INTERVAL": "0.05", "NN_LOG_LEVEL": "warning"}


class Appender(threading.Thread):
    """Appends batches of samples with unique ids (the first input) until stopped or the server is gone."""

    def __init__(self, url: str, first_id: int):
        super().__init__(daemon=True)
        self.url, self.next_id = url, first_id
        self.acked: set[int] = set()
        self.uncertain: set[int] = set()  # sent, but the server died before answering
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            while not self.stop.is_set():
                ids = list(range(self.next_id, self.next_id + BATCH))
                self.next_id += BATCH
                body = {"inputs": [[i, 0.5, -0.5, 1.0] for i in ids], "targets": [i % 2 for i in ids]}
                try:
                    response = http.post("/models/c/samples", json=body)
                except httpx.HTTPError:
                    self.uncertain.update(ids)
                    return
                assert response.status_code == 200, response.text
                self.acked.update(ids)
                self.stop.wait(0.01)  # pacing: a steady trickle, not a flood


def worker_pids(server_pid: int) -> list[int]:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children")
    try:
        pids = [int(p) for p in children.read_text().split()]
    except OSError:
        return []
    return [p for p in pids if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def check_database(data_dir: Path, acked: set[int], uncertain: set[int]) -> int:
    """Opens the database the way a restart does and checks every sample is there exactly once."""
    con = sqlite3.connect(data_dir / "nn.sqlite3")
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        Network.from_bytes(con.execute("SELECT blob FROM models WHERE model_id = 'c'").fetchone()[0])  # not half-written
        consume = {job_id: bool(c) for job_id, c in con.execute("SELECT job_id, consume_buffer FROM jobs")}
        present: list[int] = []
        for job_id, n, n_in, dtype, x in con.execute("SELECT job_id, n, n_in, dtype, x FROM samples WHERE model_id = 'c'"):
            if job_id is None or consume[job_id]:  # the buffer and the samples consuming jobs took (copies aside)
                present += np.frombuffer(x, dtype=dtype).reshape(n, n_in)[:, 0].astype(int).tolist()
        consumed = con.execute("SELECT COALESCE(SUM(n_samples), 0) FROM jobs WHERE consume_buffer = 1 "
                               "AND model_version IS NOT NULL").fetchone()[0]
        assert con.execute("SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'cancelled') "
                           "AND checkpoint IS NOT NULL").fetchone()[0] == 0  # finished jobs keep no checkpoint
    finally:
        con.close()
    assert len(present) == len(set(present)), "a sample is in the database twice"
    assert set(present) <= acked | uncertain, "a sample nobody sent"
    # every acknowledged sample is still there or was consumed by a job that changed the model
    assert len(acked - set(present)) <= consumed
    assert len(acked) <= len(present) + consumed <= len(acked) + len(uncertain)
    return len(present)


@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(tmp_path):
    rng = random.Random(5)
    url, process = start_server(tmp_path, **ENV)
    assert httpx.post(f"{url}/models", json={"model_id": "c", "layer_sizes": [4, 8, 2], "activations": ["relu", "softmax"],
                                             "seed": 0}, timeout=10).status_code == 201
    acked, uncertain, next_id, kills = set(), set(), 0, {"server": 0, "worker": 0}
    try:
        for rep in range(REPS):
            appender = Appender(url, next_id)
            appender.start()
            for consume in (True, False):  # one job takes the buffered samples, one trains on a copy
                body = {"min_samples": BATCH, "epochs": 20, "batch_size": 4, "learning_rate": 0.001,
                        "optimizer": "sgd", "consume_buffer": consume, "seed": rep}
                assert httpx.post(f"{url}/models/c/training-jobs", json=body, timeout=10).status_code == 202
            deadline = time.monotonic() + rng.uniform(0.05, 0.8)  # a random point in training and appending
            while time.monotonic() < deadline:
                time.sleep(0.01)
            workers = worker_pids(process.pid)
            if workers and rng.random() < 0.5:
                os.kill(workers[0], signal.SIGKILL)  # the service replaces it and requeues its job...
                kills["worker"] += 1
                deadline = time.monotonic() + rng.uniform(0.05, 0.5)
                while time.monotonic() < deadline:
                    time.sleep(0.01)
            process.kill()  # ... and then the whole service dies too
            process.wait()
            kills["server"] += 1
            appender.stop.set()
            appender.join(10)
            acked |= appender.acked
            uncertain |= appender.uncertain
            next_id = appender.next_id
            check_database(tmp_path, acked, uncertain)
            url, process = start_server(tmp_path, **ENV)

        # the end: enough samples for any job still buffering, then every job must end
        last = {"inputs": [[i, 0.5, -0.5, 1.0] for i in range(next_id, next_id + 2 * BATCH)],
                "targets": [i % 2 for i in range(next_id, next_id + 2 * BATCH)]}
        assert httpx.post(f"{url}/models/c/samples", json=last, timeout=10).status_code == 200
        acked |= set(range(next_id, next_id + 2 * BATCH))
        deadline = time.monotonic() + 60
        while True:
            jobs = httpx.get(f"{url}/models/c/jobs", params={"limit": 500}, timeout=10).json()["data"]
            if all(job["status"] in TERMINAL for job in jobs):
                break
            assert time.monotonic() < deadline, [job["status"] for job in jobs if job["status"] not in TERMINAL]
            time.sleep(0.05)
        assert len(jobs) == 2 * REPS
    finally:
        stop_server(process)
    buffered = check_database(tmp_path, acked, uncertain)
    print(f"crash test: {REPS} repetitions, {kills['server']} server and {kills['worker']} worker SIGKILLs, "
          f"{len(acked)} samples acknowledged, {len(uncertain)} in flight at a kill, {buffered} still buffered, "
          f"jobs: { {s: sum(j['status'] == s for j in jobs) for s in TERMINAL} }")
