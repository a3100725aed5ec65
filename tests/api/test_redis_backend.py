"""NN_BACKEND=redis end to end: two API replicas (real uvicorn processes) and two `python main.py worker`
processes share NN_TEST_REDIS_URL (default database 15 of the Redis at 127.0.0.1:6379; skipped when none answers).

A job is created on one replica, fed and trained through the other; a worker is SIGKILLed in the
middle of a job, which finishes on the other worker with the same weights as an uninterrupted run;
samples are appended from both replicas at once.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = os.environ.get("NN_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _redis():
    import redis

    return redis.Redis.from_url(REDIS_URL, socket_connect_timeout=0.5, socket_timeout=2)


def _redis_available() -> bool:
    try:
        return bool(_redis().ping())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _redis_available(), reason=f"no Redis at {REDIS_URL}")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Cluster:
    def __init__(self, tmp: Path):
        self.prefix = f"e2e-{uuid.uuid4().hex[:8]}"
        self.env = {**os.environ, "NN_BACKEND": "redis", "NN_REDIS_URL": REDIS_URL, "NN_REDIS_PREFIX": self.prefix,
                    "NN_REDIS_QUEUE": f"{self.prefix}-training", "NN_LEASE_SECONDS": "1.5", "NN_LOG_LEVEL": "warning",
                    "NN_PROGRESS_INTERVAL": "0.1", "NN_DATA_DIR": str(tmp), "PYTHONUNBUFFERED": "1",
                    "NN_NOTIFY_ALLOW": "127.0.0.1", "NN_NOTIFY_INTERVAL": "0.1", "NN_NOTIFY_BACKOFF": "0.1"}
        self.tmp = tmp
        self.replicas: list[tuple[subprocess.Popen, str]] = []
        self.workers: list[subprocess.Popen] = []

    def _spawn(self, args: list[str], name: str, **env) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, env={**self.env, **env},
                                stdout=log, stderr=subprocess.STDOUT)

    def start(self, replicas: int = 2, workers: int = 2) -> None:
        for i in range(replicas):
            port = free_port()
            self.replicas.append((self._spawn([], f"api{i}", NN_PORT=str(port)), f"http://127.0.0.1:{port}"))
        for _ in range(workers):
            self.add_worker()
        for _, url in self.replicas:
            wait_for(lambda: self._up(url), 60, f"the replica at {url}", interval=0.2)
        wait_for(lambda: self.health()["workers_alive"] >= workers, 60, "the workers to register", interval=0.2)

    def add_worker(self, **env) -> subprocess.Popen:
        process = self._spawn(["worker"], f"worker{len(self.workers)}", **env)
        self.workers.append(process)
        return process

    @staticmethod
    def _up(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def health(self) -> dict:
        return httpx.get(f"{self.replicas[0][1]}/health", timeout=5).json()

    @property
    def urls(self) -> list[str]:
        return [url for _, url in self.replicas]

    def stop(self, flush: bool = True) -> None:
        for process in [p for p, _ in self.replicas] + self.workers:
            if process.poll() is None:
                process.terminate()
        for process in [p for p, _ in self.replicas] + self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        if flush:
            _redis().flushdb()  # database 15 is the tests' own: RQ's job and worker keys go too


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    _redis().flushdb()
    c = Cluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def _data(n: int, seed: int = 0) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = (x[:, 0] * x[:, 1] > 0).astype(int)
    return x.round(4).tolist(), y.tolist()


def _model(url: str, model_id: str) -> dict:
    r = httpx.post(f"{url}/models", json={"model_id": model_id, "layer_sizes": [2, 16, 1],
                                         "activations": ["tanh", "sigmoid"], "seed": 1}, timeout=10)
    assert r.status_code == 201, r.text
    return r.json()


def _finished(url: str, job_id: str) -> dict | None:
    job = httpx.get(f"{url}/jobs/{job_id}", timeout=10).json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None


def test_health_reports_queue_and_workers(cluster):
    health = cluster.health()
    assert health["status"] == "ok" and health["backend"] == "redis"
    assert health["workers_alive"] == 2 and health["queue_length"] >= 0 and health["queued_jobs"] >= 0


def test_job_across_replicas(cluster):
    a, b = cluster.urls
    _model(a, "across")
    x, y = _data(64)
    r = httpx.post(f"{b}/models/across/samples", json={"inputs": x[:40], "targets": y[:40]}, timeout=10)
    assert r.json()["buffer_size"] == 40
    job = httpx.post(f"{b}/models/across/training-jobs", json={"min_samples": 64, "epochs": 5, "batch_size": 16,
                                                               "seed": 3}, timeout=10).json()
    assert job["status"] == "buffering"
    httpx.post(f"{a}/models/across/samples", json={"inputs": x[40:], "targets": y[40:]}, timeout=10)  # promotes it
    done = wait_for(lambda: _finished(a, job["job_id"]), 60, "the job to finish")
    assert done["status"] == "succeeded", done
    assert done["n_samples"] == 64 and done["epochs_completed"] == 5 and done["model_version"] == 2
    assert [h["epoch"] for h in done["history"]] == [1, 2, 3, 4, 5] and done["progress"]["percent"] == 100.0
    model = httpx.get(f"{b}/models/across", timeout=10).json()
    assert model["version"] == 2 and model["buffer_size"] == 0
    out = httpx.post(f"{b}/models/across/output", json={"inputs": x[:3]}, timeout=10)
    assert out.status_code == 200 and out.json()["model_version"] == 2


def test_versions_notification_and_jobs_list_across_replicas(cluster):
    """An RQ worker commits the job; the replicas' deliverers send its record (after a 500), signed, once
    delivered; the other replica lists the version it made and the job in GET /jobs."""
    from tests.api.test_notify import SECRET, Receiver, verified

    a, b = cluster.urls
    _model(a, "notified")
    x, y = _data(32)
    receiver = Receiver(answers=[500])
    try:
        job = httpx.post(f"{a}/models/notified/training-jobs", timeout=10, json={
            "inputs": x, "targets": y, "min_samples": 32, "epochs": 3, "notify": {"url": receiver.url, "secret": SECRET}}).json()
        note = wait_for(lambda: (lambda n: n if n["status"] == "delivered" else None)(
            httpx.get(f"{b}/jobs/{job['job_id']}", timeout=10).json()["notify"]), 60, "the notification")
        assert note["attempts"] == 2 and [status for _, _, status in receiver.received] == [500, 200]
        assert all(verified(headers, body) for headers, body, _ in receiver.received)
        assert json.loads(receiver.received[-1][1])["status"] == "succeeded"
    finally:
        receiver.close()
    versions = httpx.get(f"{b}/models/notified/versions", timeout=10).json()["data"]
    assert [(v["version"], v["source"], v["job_id"]) for v in versions] == [(2, "job", job["job_id"]), (1, "create", None)]
    listed = httpx.get(f"{a}/jobs", params={"model_id": "notified", "status": "succeeded"}, timeout=10).json()
    assert [j["job_id"] for j in listed["data"]] == [job["job_id"]] and listed["data"][0]["duration_seconds"] > 0


def test_sigkill_worker_mid_job_resumes_from_checkpoint(cluster):
    a, b = cluster.urls
    x, y = _data(256, seed=5)
    body = {"inputs": x, "targets": y, "epochs": 150, "batch_size": 4, "seed": 7}
    for model_id in ("killed", "reference"):
        _model(a, model_id)
    job = httpx.post(f"{a}/models/killed/training-jobs", json=body, timeout=10).json()
    key = f"{cluster.prefix}:j:{job['job_id']}"
    r = _redis()
    wait_for(lambda: int(r.hget(key, "epochs_done") or 0) >= 3, 60, "a few checkpointed epochs")
    worker_id = r.hget(key, "worker_id").decode()
    pid = int(worker_id.rsplit("-", 1)[1])
    victim = next(p for p in cluster.workers if p.pid == pid)
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    killed_at, appended = r.pipeline().hget(key, "epochs_done").lrange(f"{cluster.prefix}:hist:{job['job_id']}", 0, -1).execute()
    killed_at = int(killed_at)
    assert [json.loads(h)["epoch"] for h in appended] == list(range(1, killed_at + 1))  # it ends at the checkpoint
    cluster.add_worker()  # back to two; either may resume the job
    assert killed_at < 150, "the job ended before the kill; make it longer"

    done = wait_for(lambda: _finished(b, job["job_id"]), 120, "the killed job to finish elsewhere", interval=0.2)
    assert done["status"] == "succeeded", done
    restarts = [h for h in done["history"] if h.get("event") == "restart"]
    assert len(restarts) == 1 and restarts[0]["restart"] == 1 and restarts[0]["epoch"] >= 3
    epochs = [h["epoch"] for h in done["history"] if "event" not in h]
    assert epochs == list(range(1, 151))  # every epoch once: resumed from the checkpoint, nothing lost or repeated

    reference = httpx.post(f"{b}/models/reference/training-jobs", json=body, timeout=10).json()
    ref = wait_for(lambda: _finished(a, reference["job_id"]), 120, "the reference job", interval=0.2)
    assert ref["status"] == "succeeded" and not [h for h in ref["history"] if h.get("event")]
    w_killed = httpx.get(f"{a}/models/killed/weights", timeout=10).json()["layers"]
    w_ref = httpx.get(f"{b}/models/reference/weights", timeout=10).json()["layers"]
    assert w_killed == w_ref  # bitwise: the resumed job equals one that was never interrupted


def test_concurrent_appends_from_both_replicas(cluster):
    _model(cluster.urls[0], "appends")
    failures = []

    def append(url: str, base: int) -> None:
        with httpx.Client(timeout=10) as client:
            for i in range(15):
                rows = [[float(base + i * 4 + k), 0.0] for k in range(4)]
                r = client.post(f"{url}/models/appends/samples", json={"inputs": rows, "targets": [0] * 4})
                if r.status_code != 200:
                    failures.append(r.text)

    threads = [threading.Thread(target=append, args=(url, 1000 * i)) for i, url in enumerate(cluster.urls * 2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not failures
    for url in cluster.urls:
        assert httpx.get(f"{url}/models/appends/samples", timeout=10).json()["buffer_size"] == 4 * 15 * 4
    job = httpx.post(f"{cluster.urls[1]}/models/appends/training-jobs", json={"min_samples": 240, "epochs": 1},
                     timeout=10).json()
    done = wait_for(lambda: _finished(cluster.urls[0], job["job_id"]), 60, "the job on the appended samples")
    assert done["status"] == "succeeded" and done["n_samples"] == 240


def test_concurrent_jobs_with_inline_samples_train_on_exactly_their_own(cluster):
    """Issue 10 item 4: 40 concurrent jobs of 10 inline samples on one model, through both replicas."""
    from concurrent.futures import ThreadPoolExecutor

    _model(cluster.urls[0], "inline-race")

    def submit(i: int) -> dict:
        body = {"inputs": [[float(i), float(k)] for k in range(10)], "targets": [k % 2 for k in range(10)], "epochs": 1,
                "batch_size": 10}
        r = httpx.post(f"{cluster.urls[i % 2]}/models/inline-race/training-jobs", json=body, timeout=30)
        assert r.status_code == 202, r.text
        return r.json()

    with ThreadPoolExecutor(40) as pool:
        jobs = list(pool.map(submit, range(40)))
    assert all(j["n_samples"] == 10 for j in jobs)
    done = [wait_for(lambda: _finished(cluster.urls[0], j["job_id"]), 120, f"job {j['job_id']}") for j in jobs]
    assert [(d["status"], d["n_samples"], d["metrics"]["samples"]) for d in done] == [("succeeded", 10, 10)] * 40
    model = httpx.get(f"{cluster.urls[1]}/models/inline-race", timeout=10).json()
    assert model["version"] == 41 and model["buffer_size"] == 0


def test_cancel_and_events_across_replicas(cluster):
    a, b = cluster.urls
    _model(a, "cancelled")
    x, y = _data(256, seed=9)
    job = httpx.post(f"{a}/models/cancelled/training-jobs", json={"inputs": x, "targets": y, "epochs": 500,
                                                                 "batch_size": 4}, timeout=10).json()
    events = []
    with httpx.stream("GET", f"{b}/jobs/{job['job_id']}/events", timeout=30) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                events.append(line.removeprefix("event: "))
                if events == ["progress"] * 3:
                    r = httpx.post(f"{a}/jobs/{job['job_id']}/cancel", timeout=10)
                    assert r.status_code == 200, (r.text, events)
            if events and events[-1] == "end" and line.startswith("data: "):
                final = line
                break
    assert events[0] == "progress" and events[-1] == "end" and '"status": "cancelled"' in final
    model = httpx.get(f"{b}/models/cancelled", timeout=10).json()
    assert model["latest_job"]["status"] == "cancelled"


def test_unreachable_redis_answers_503():
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.settings import Settings

    app = create_app(Settings(backend="redis", redis_url="redis://127.0.0.1:1/0", redis_timeout=0.5))
    with TestClient(app) as client:
        started = time.monotonic()
        r = client.get("/models")
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
        r = client.post("/models", json={"layer_sizes": [2, 1]})
        assert r.status_code == 503
        r = client.post("/models/m/output", json={"inputs": [[1.0, 2.0]]})  # its version is read on the event loop
        assert r.status_code == 503 and "unreachable" in r.json()["detail"]
        r = client.post("/v2/models/m/infer", json={"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32",
                                                                 "data": [1.0, 2.0]}]})
        assert r.status_code == 503 and "unreachable" in r.json()["error"]
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["queue_length"] is None
        assert time.monotonic() - started < 30  # at once, not after retries with backoff


def test_search_trials_run_on_both_workers_and_the_best_is_applied(cluster):
    from api.search_trials import builder_for
    from neural_net.selection import run_trial

    a, b = cluster.urls
    _model(a, "searched")
    x, y = _data(200, seed=11)
    httpx.post(f"{a}/models/searched/samples", json={"inputs": x, "targets": y}, timeout=10)
    body = {"space": {"hidden_sizes": [[8], [16, 16]], "learning_rate": [0.003, 0.03]}, "folds": 2, "metric": "accuracy",
            "seed": 5, "epochs": 30, "batch_size": 8, "min_samples": 200, "apply_best": True}
    job = httpx.post(f"{b}/models/searched/search-jobs", json=body, timeout=10).json()
    assert job["status"] in ("queued", "running") and job["n_samples"] == 200
    done = wait_for(lambda: _finished(a, job["job_id"]), 60, "the search to finish")
    assert done["status"] == "succeeded" and done["stage"] == "apply" and done["model_version"] == 2, done
    trials = done["search"]["trials"]
    assert len(trials) == 4 and done["search"]["best"] == trials[0]
    assert len({t["worker_id"] for t in trials}) == 2  # RQ jobs on the same queue: both workers ran trials ...
    spans = sorted((t["started_at"], t["finished_at"]) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))  # ... at the same time
    info = httpx.get(f"{b}/models/searched", timeout=10).json()
    assert info["layer_sizes"] == [2, *trials[0]["params"]["hidden_sizes"], 1]
    # the same scores as the core computes in this process: trials are reproducible from the seed (the
    # builder takes the unsearched activation and initialisers from the model, which apply_best kept)
    xs, ys = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float32)[:, None]
    defaults = done["params"]["defaults"]
    for t in trials[:2]:
        expected = run_trial(builder_for(info), xs, ys, t["params"], t["index"], "accuracy", 2, 0.2, 5, defaults)
        assert t["score"] == expected.score


def test_training_from_a_dataset_uploaded_to_another_replica(cluster):
    """Replicas and workers share the dataset folder (here NN_DATA_DIR/datasets, the same for all)."""
    a, b = cluster.urls
    _model(a, "from-dataset")
    x, y = _data(64, seed=5)
    csv = "x0,x1,label\n" + "".join(f"{u},{v},{t}\n" for (u, v), t in zip(x, y))
    dataset = httpx.post(f"{a}/datasets", content=csv, headers={"content-type": "text/csv"}, timeout=30)
    assert dataset.status_code == 201, dataset.text
    dataset_id = dataset.json()["dataset_id"]
    job = httpx.post(f"{b}/models/from-dataset/training-jobs", json={"dataset": dataset_id, "epochs": 3,
                                                                     "batch_size": 16, "seed": 0}, timeout=10)
    assert job.status_code == 202, job.text
    done = wait_for(lambda: _finished(a, job.json()["job_id"]), 60, "the job to finish")
    assert done["status"] == "succeeded", done
    assert done["n_samples"] == 64 and done["model_version"] == 2
    evaluated = httpx.post(f"{b}/models/from-dataset/evaluate", json={"dataset": dataset_id}, timeout=10)
    assert evaluated.status_code == 200 and evaluated.json()["n_samples"] == 64
    # targets the model's loss refuses (a label 2 for a sigmoid output): the job is refused as /evaluate refuses them
    bad = httpx.post(f"{a}/datasets", content="x0,x1,label\n0,1,2\n1,0,0\n", headers={"content-type": "text/csv"},
                     timeout=10).json()["dataset_id"]
    evaluated = httpx.post(f"{b}/models/from-dataset/evaluate", json={"dataset": bad}, timeout=10)
    assert evaluated.status_code == 422 and "must lie in [0, 1]" in evaluated.json()["detail"], evaluated.text
    for body in ({"dataset": bad}, {"dataset": dataset_id, "validation_dataset": bad}):
        refused = httpx.post(f"{b}/models/from-dataset/training-jobs", json=body, timeout=10)
        assert refused.status_code == 422 and refused.json()["detail"].endswith(evaluated.json()["detail"].split(":", 1)[1])
    assert httpx.delete(f"{b}/datasets/{dataset_id}", timeout=10).status_code == 204
    assert httpx.get(f"{a}/datasets/{dataset_id}", timeout=10).status_code == 404


def test_a_worker_of_another_prefix_leaves_the_job_to_a_worker_of_the_right_one(tmp_path):
    """A worker with a wrong NN_REDIS_PREFIX on the service's queue used to take the RQ job, find no record,
    and complete it: the job stayed queued for ever. It now puts the job back and says why, loudly."""
    service = Cluster(tmp_path)
    try:
        service.start(replicas=1, workers=0)
        url = service.urls[0]
        wrong = service.add_worker(NN_REDIS_PREFIX=f"{service.prefix}-other")
        _model(url, "mismatch")
        x, y = _data(32, seed=7)
        job = httpx.post(f"{url}/models/mismatch/training-jobs", json={"inputs": x, "targets": y, "epochs": 2,
                                                                     "batch_size": 16, "seed": 0}, timeout=10)
        assert job.status_code == 202, job.text
        log = service.tmp / "worker0.log"
        refusal = wait_for(lambda: [line for line in log.read_text().splitlines() if "ERROR" in line], 60,
                           "the worker of the other prefix to refuse the job")[0]
        assert f"NN_REDIS_PREFIX='{service.prefix}'" in refusal and f"'{service.prefix}-other'" in refusal
        assert wrong.poll() is None  # it keeps running: it is the job that is not its own
        assert httpx.get(f"{url}/jobs/{job.json()['job_id']}", timeout=10).json()["status"] == "queued"
        assert service.health()["queue_length"] == 1  # back on RQ's queue, not completed
        service.add_worker()
        done = wait_for(lambda: _finished(url, job.json()["job_id"]), 60, "a worker of the right prefix to run it")
        assert done["status"] == "succeeded", done
    finally:
        _stop_own(service)


def _stop_own(service) -> None:
    """Stops a test's own cluster and removes its keys and queue, leaving the module's cluster running on the
    same database."""
    from rq import Queue

    service.stop(flush=False)
    r = _redis()
    for key in [*r.scan_iter(f"{service.prefix}*")]:
        r.delete(key)
    Queue(service.env["NN_REDIS_QUEUE"], connection=r).delete(delete_jobs=True)


def test_a_sigkilled_worker_stops_counting_in_health(tmp_path):
    """/health counted RQ's set of a queue's workers, where a SIGKILLed worker stays until another worker's
    maintenance (minutes): a fleet whose workers had all died looked alive. It now counts workers whose key
    exists, and the key lives WORKER_TTL s after an idle worker's heartbeat (WORKER_TTL + lease/3 busy)."""
    from api.rq_runner import WORKER_TTL

    service = Cluster(tmp_path)
    try:
        service.start(replicas=1, workers=2)
        url = service.urls[0]
        _model(url, "dies")
        x, y = _data(256, seed=3)
        job = httpx.post(f"{url}/models/dies/training-jobs", json={"inputs": x, "targets": y, "epochs": 10_000,
                                                                 "batch_size": 1, "seed": 0}, timeout=10).json()
        wait_for(lambda: httpx.get(f"{url}/jobs/{job['job_id']}", timeout=10).json()["status"] == "running", 60,
                 "one worker to train (the other idles)", interval=0.2)
        assert service.health()["workers_alive"] == 2
        for process in service.workers:  # one busy, one idle
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        lease = float(service.env["NN_LEASE_SECONDS"])
        wait_for(lambda: service.health()["workers_alive"] == 0, 2 * WORKER_TTL + lease + 10,
                 "the dead workers to stop counting", interval=0.5)
    finally:
        _stop_own(service)
        _redis().delete(f"rq:workers:{service.env['NN_REDIS_QUEUE']}")
