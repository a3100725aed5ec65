"""RQ as the one queue of the redis backend: every claimable job is one RQ job, enqueued in the transaction
that made it claimable; a job RQ runs again after its worker died is taken over from its checkpoint; when RQ
gives up, the job fails. Uses NN_TEST_REDIS_URL (skipped when no Redis answers there)."""

import os
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from api import rq_runner
from api.errors import LeaseLost, ModelNotFound
from api.settings import Settings
from tests.api.conftest import wait_for
from tests.servers import free_port
from tests.api.storage.test_store_contract import REDIS_URL, job, redis_available, rows, search

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_URL}")


@pytest.fixture
def runner():
    from rq import Queue

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    settings = Settings(backend="redis", redis_url=REDIS_URL, redis_prefix=prefix, redis_queue=f"{prefix}-training",
                        lease_seconds=0.3)
    store = rq_runner.open_redis_store(settings)
    queue = Queue(settings.redis_queue, connection=store.redis)
    yield settings, store, queue
    store.reset()
    queue.delete(delete_jobs=True)


def carried(queue) -> list[str]:
    """The training job each RQ job on the queue carries, in queue order."""
    from rq.job import Job

    return [Job.fetch(i, connection=queue.connection).args[0] for i in queue.job_ids]


def test_each_claimable_job_is_one_rq_job_enqueued_in_the_same_transaction(runner):
    settings, store, queue = runner
    store.create_model("m", b"b", {})
    store.create_model("n", b"b", {})
    a = store.create_job(job("m"), *rows(2), max_buffer=0).job_id
    b = store.create_job(job("m"), *rows(2), max_buffer=0).job_id
    assert carried(queue) == [a]  # b waits behind a: its model takes one job at a time
    c = store.create_job(job("n", min_samples=2)).job_id
    assert carried(queue) == [a]
    assert [j.job_id for j in store.append_samples("n", *rows(2), 0)[1]] == [c]  # promoted and enqueued in one step
    assert carried(queue) == [a, c]
    with pytest.raises(ModelNotFound):
        store.create_job(job("gone"), *rows(2), max_buffer=0)
    assert carried(queue) == [a, c]  # a step that failed enqueued nothing
    assert store.claim_job("w", job_id=a).status == "running" and carried(queue) == [a, c]
    store.finish_job(a, "succeeded", blob=b"v2", info={})
    assert carried(queue) == [a, c, b]  # the model is free: its next job can run
    store.cancel_job(b)
    s = store.create_search_job(*search("m", 3), *rows(4), max_buffer=0).job_id
    assert carried(queue) == [a, c, b, s, s, s]  # one per trial; trials never wait for the model
    assert store.count_queued() == 2  # c and s (a ran, b was cancelled)
    rq_cli = shutil.which("rq")
    if rq_cli:  # RQ's own monitor shows the same queue
        out = subprocess.run([rq_cli, "info", "--url", REDIS_URL, "--only-queues", "--raw", settings.redis_queue],
                             capture_output=True, text=True, timeout=60).stdout
        assert f"queue {settings.redis_queue} 6" in out, out


def test_a_job_rq_runs_again_is_taken_over_from_its_checkpoint(runner):
    settings, store, queue = runner
    other = rq_runner.open_redis_store(settings)
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0).job_id
    assert store.claim_job("dead", job_id=j, take_over=True).worker_id == "dead"
    store.save_checkpoint(j, b"ckpt", {}, 1, [{"epoch": 1}], {})
    assert other.claim_job("new", job_id=j, take_over=True) is None  # its lease is alive: nothing to take over
    wait_for(lambda: other.lease_alive(j), lambda alive: not alive, timeout=10)  # no heartbeat: the lease expires
    taken = other.claim_job("new", job_id=j, take_over=True)
    assert (taken.status, taken.worker_id, taken.epochs_done) == ("running", "new", 1)
    assert taken.history[-1]["event"] == "restart" and taken.history[-1]["restart"] == 1
    assert carried(queue) == [j]  # the RQ job that runs it again carries it: nothing new was enqueued
    with pytest.raises(LeaseLost):  # the presumed-dead worker can write nothing
        store.finish_job(j, "succeeded", blob=b"stale", info={})
    assert other.finish_job(j, "succeeded", blob=b"good", info={}).model_version == 2


def _job_of_a_dead_worker(runner, monkeypatch, cancel: bool = False):
    """A job claimed by a worker that died after a checkpoint (cancelled meanwhile if asked), and its RQ job."""
    from rq.job import Job

    settings, store, queue = runner
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0).job_id
    store.claim_job("dead", job_id=j)
    store.save_checkpoint(j, b"ckpt", {}, 1, [], {})
    if cancel:
        assert store.cancel_job(j).status == "cancelling"  # its worker never stops it: it died
    monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(settings, store, "w", threading.Event()))
    return store, j, Job.fetch(queue.job_ids[0], connection=store.redis)


def test_when_rq_gives_up_the_job_fails(runner, monkeypatch):
    store, j, rq_job = _job_of_a_dead_worker(runner, monkeypatch)
    assert rq_job.retries_left == rq_runner.RETRIES
    rq_runner.train_failed(rq_job, store.redis, None, None, None)  # RQ retries: nothing changes
    assert store.get_job(j).status == "running"
    rq_job.retries_left = 0
    wait_for(lambda: store.lease_alive(j), lambda alive: not alive, timeout=10)
    rq_runner.train_failed(rq_job, store.redis, None, None, None)
    failed = store.get_job(j)
    assert failed.status == "failed" and "given up" in failed.error and failed.model_version == 2  # its checkpoint
    assert store.load_model("m")[0] == b"ckpt"


def test_when_rq_gives_up_a_job_being_cancelled_it_ends_cancelled(runner, monkeypatch):
    store, j, rq_job = _job_of_a_dead_worker(runner, monkeypatch, cancel=True)
    rq_job.retries_left = 0
    wait_for(lambda: store.lease_alive(j), lambda alive: not alive, timeout=10)
    rq_runner.train_failed(rq_job, store.redis, None, None, None)
    ended = store.get_job(j)
    assert ended.status == "cancelled" and "given up" in ended.error and ended.model_version == 2


def test_a_job_whose_workers_kept_dying_fails_and_frees_its_model(runner, tmp_path):
    """The operator's path with real workers: a worker is SIGKILLed on the job's last run (no retries left);
    another worker's RQ maintenance, a thread beside its training loop, finds the job abandoned and RQ's
    failure callback ends it failed, so the next job on the model runs."""
    from rq.job import Job

    from api.schemas import JobCreate, ModelCreate
    from api.services import Service

    settings, store, queue = runner
    service = Service(store, settings)
    service.create_model(ModelCreate(model_id="m", layer_sizes=[2, 4, 1]))
    x, y = rows(64)
    body = {"inputs": x.tolist(), "targets": y.tolist(), "batch_size": 1}
    doomed = service.submit_job("m", JobCreate(**body, epochs=10_000)).job_id
    rq_job = Job.fetch(queue.job_ids[0], connection=store.redis)
    rq_job.retries_left = 0  # as after RETRIES runs that all died
    rq_job.save()
    env = {**os.environ, "NN_BACKEND": "redis", "NN_REDIS_URL": REDIS_URL, "NN_REDIS_PREFIX": settings.redis_prefix,
           "NN_REDIS_QUEUE": settings.redis_queue, "NN_LEASE_SECONDS": "1", "NN_LOG_LEVEL": "warning",
           "NN_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "workers.log", "ab")

    def worker() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "main.py", "worker"], cwd=ROOT, env=env, stdout=log,
                                stderr=subprocess.STDOUT)

    first = worker()
    second = None
    try:
        wait_for(lambda: store.get_job(doomed), lambda j: j.status == "running" and j.epochs_done >= 1, timeout=60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        after = service.submit_job("m", JobCreate(**body, epochs=1)).job_id
        assert store.get_job(after).status == "queued"  # behind the doomed job, which holds the model
        second = worker()
        failed = wait_for(lambda: store.get_job(doomed), lambda j: j.status != "running", timeout=60)
        assert failed.status == "failed" and "given up" in failed.error and "its worker died" in failed.error
        assert failed.model_version == 2  # the model took its last checkpoint
        done = wait_for(lambda: store.get_job(after), lambda j: j.status in ("succeeded", "failed"), timeout=60)
        assert done.status == "succeeded" and done.model_version == 3  # the model is free again
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(15)
        log.close()
    assert b"signal only works in main thread" not in (tmp_path / "workers.log").read_bytes()


@pytest.mark.parametrize("lease", [0.3, 10.0, 600.0])
def test_a_worker_key_outlives_the_gap_between_its_heartbeats_and_no_more_when_idle(runner, monkeypatch, lease):
    """Idle, RQ refreshes the worker's key every dequeue timeout; busy, the heartbeat thread every lease/3 s. The
    key's TTL covers either gap, and idle it is WORKER_TTL (RQ's own adds 60 s), which bounds how long /health
    counts a dead worker."""
    from rq.worker import WorkerStatus

    settings, store, queue = runner
    settings = settings.model_copy(update={"lease_seconds": lease})
    monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(settings, store, "w", threading.Event()))
    worker = rq_runner.TrainingWorker([queue], connection=store.redis, worker_ttl=rq_runner.WORKER_TTL)
    worker.register_birth()
    try:
        worker.heartbeat()
        assert worker.dequeue_timeout + 10 <= store.redis.ttl(worker.key) <= rq_runner.WORKER_TTL
        worker.set_state(WorkerStatus.BUSY)
        worker.heartbeat(90)  # what RQ's maintain_heartbeats asks, whatever the lease
        assert lease / 3 + 10 <= store.redis.ttl(worker.key) <= rq_runner.WORKER_TTL + lease / 3 + 1
    finally:
        worker.register_death()
        store.redis.delete(worker.key)

def test_a_worker_of_another_prefix_puts_the_job_back_untouched(runner, monkeypatch, caplog):
    from rq.registry import FinishedJobRegistry

    settings, store, queue = runner
    store.create_model("m", b"b", {})
    j = store.create_job(job("m"), *rows(2), max_buffer=0).job_id
    rq_id = queue.job_ids[0]
    wrong = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}-other"})
    stop = threading.Event()
    stop.set()  # no pause after the refusal
    monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(wrong, rq_runner.open_redis_store(wrong), "w", stop))
    worker = rq_runner.TrainingWorker([queue], connection=store.redis)
    with caplog.at_level("ERROR", logger="api.rq"):
        worker.work(burst=True, max_jobs=1)
    assert queue.job_ids == [rq_id]  # back at the head of the queue, for a worker of the right store
    assert store.redis.llen(queue.intermediate_queue_key) == 0 and FinishedJobRegistry(queue=queue).count == 0
    assert store.get_job(j).status == "queued"
    refusal = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(refusal) == 1 and repr(settings.redis_prefix) in refusal[0] and repr(wrong.redis_prefix) in refusal[0]
    assert "NN_REDIS_PREFIX" in refusal[0] and "NN_REDIS_QUEUE" in refusal[0]


def test_train_warns_when_its_job_has_no_record(runner, monkeypatch, caplog):
    settings, store, queue = runner
    monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(settings, store, "w", threading.Event()))
    with caplog.at_level("WARNING", logger="api.rq"):
        assert rq_runner.train("no-such-job").startswith("skipped")
    assert any(r.levelname == "WARNING" and "no-such-job" in r.getMessage() and settings.redis_prefix in r.getMessage()
               for r in caplog.records)


def _env(settings, tmp_path, **extra) -> dict:
    return {**os.environ, "NN_BACKEND": "redis", "NN_REDIS_URL": REDIS_URL, "NN_REDIS_PREFIX": settings.redis_prefix,
            "NN_REDIS_QUEUE": settings.redis_queue, "NN_LEASE_SECONDS": "1", "NN_LOG_LEVEL": "warning",
            "NN_DATA_DIR": str(tmp_path), "PYTHONUNBUFFERED": "1", **extra}


def test_a_worker_whose_store_is_another_redis_than_its_queue_refuses_to_start(runner, tmp_path):
    """`rq worker --url A` with NN_REDIS_URL=B took the job, found no record and completed it: the job stayed
    queued for good. Now the worker says so in one line and exits 2, leaving the job on the queue."""
    settings, store, queue = runner
    store.create_model("m", b"b", {})
    store.create_job(job("m"), *rows(2), max_buffer=0)
    rq_id = queue.job_ids[0]
    other = REDIS_URL.rsplit("/", 1)[0] + "/" + ("14" if not REDIS_URL.endswith("/14") else "13")
    rq_cli = str(Path(sys.executable).parent / "rq")
    out = subprocess.run([rq_cli, "worker", "-w", "api.rq_runner.TrainingWorker", "--worker-ttl", "20", "--url",
                          REDIS_URL, settings.redis_queue], cwd=ROOT, env=_env(settings, tmp_path, NN_REDIS_URL=other),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "another Redis than its RQ queue" in out.stdout + out.stderr
    assert queue.job_ids == [rq_id]


@pytest.mark.parametrize("url, says", [("/99", "database 99 does not exist"),
                                       ("bob:wrong@", "Redis refused the credentials")])
def test_a_redis_url_redis_refuses_is_one_line_and_no_start(runner, tmp_path, url, says):
    """A database number Redis does not have, or wrong credentials: the replica and the worker exit with one line
    naming NN_REDIS_URL (the worker retried for ever, the replica printed a traceback or started degraded)."""
    settings, _, _ = runner
    base = REDIS_URL.rsplit("/", 1)[0]
    bad = base + "/99" if url == "/99" else base.replace("redis://", "redis://" + url) + "/0"
    for argv in (["worker"], []):
        out = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, env=_env(settings, tmp_path, NN_REDIS_URL=bad,
                             NN_PORT=str(free_port())), capture_output=True, text=True, timeout=60)
        text = out.stdout + out.stderr
        assert out.returncode != 0 and says in text and "NN_REDIS_URL=" in text and "Traceback" not in text, text
        assert "wrong@" not in text  # the password is not logged


def test_a_worker_registers_again_after_redis_lost_its_data(runner, monkeypatch):
    """A Redis restart that lost data dropped the worker from RQ's set of the queue's workers, so /health counted
    0 live workers for good: each heartbeat registers it again."""
    from rq.job import Job

    settings, store, queue = runner
    monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(settings, store, "w", threading.Event()))
    worker = rq_runner.TrainingWorker([queue], connection=store.redis, worker_ttl=rq_runner.WORKER_TTL)
    worker.register_birth()
    try:
        assert rq_runner.queue_stats(store, settings)["workers_alive"] == 1
        store.redis.delete(worker.key, f"rq:workers:{queue.name}", "rq:workers")  # what the restart lost
        assert rq_runner.queue_stats(store, settings)["workers_alive"] == 0
        worker.heartbeat()  # idle
        assert rq_runner.queue_stats(store, settings)["workers_alive"] == 1
        store.redis.delete(worker.key, f"rq:workers:{queue.name}")
        with store.redis.pipeline() as pipe:  # busy: RQ's maintain_heartbeats passes a pipeline
            worker.heartbeat(90, pipeline=pipe)
            pipe.execute()
        assert rq_runner.queue_stats(store, settings)["workers_alive"] == 1
        assert store.redis.hget(worker.key, "birth") is not None  # rq info can read it again
    finally:
        worker.register_death()
        store.redis.delete(worker.key)


def test_a_worker_of_another_prefix_is_not_counted_alive(runner, monkeypatch):
    settings, store, queue = runner
    wrong = settings.model_copy(update={"redis_prefix": f"{settings.redis_prefix}-other"})
    workers = []
    try:
        for s in (wrong, settings):
            monkeypatch.setattr(rq_runner, "_context", rq_runner._Context(s, store, "w", threading.Event()))
            workers.append(rq_runner.TrainingWorker([queue], connection=store.redis, worker_ttl=rq_runner.WORKER_TTL))
            workers[-1].register_birth()
            workers[-1].heartbeat()
            assert rq_runner.queue_stats(store, settings)["workers_alive"] == (s is settings)
    finally:
        for w in workers:
            w.register_death()
            store.redis.delete(w.key)


def test_a_store_outage_is_logged_once_until_the_store_answers(runner, monkeypatch, caplog):
    from api.errors import StoreUnavailable
    from api.services import Service

    settings, store, _ = runner
    service = Service(store, settings)
    real = store.list_models

    def down(*args):
        raise StoreUnavailable("the Redis store at x is unreachable")

    with caplog.at_level("INFO", logger="api.jobs"):
        monkeypatch.setattr(store, "list_models", down)
        assert [service.healthy() for _ in range(5)] == [False] * 5
        monkeypatch.setattr(store, "list_models", real)
        assert service.healthy()
        monkeypatch.setattr(store, "list_models", down)
        assert not service.healthy() and not service.healthy()
    failed = [r for r in caplog.records if "store check failed" in r.getMessage()]
    assert len(failed) == 2 and all(r.levelname == "WARNING" and not r.exc_info for r in failed)


def test_a_run_ended_by_a_redis_outage_uses_up_no_retry(runner, monkeypatch):
    """A Redis outage longer than the lease ended runs (StoreUnavailable, or RQ found them abandoned while their
    worker lived) and each used one of RQ's retries: a long job failed after six outages with no worker dead."""
    from rq.exceptions import AbandonedJobError

    from api.errors import StoreUnavailable

    store, j, rq_job = _job_of_a_dead_worker(runner, monkeypatch)
    settings, _, queue = runner
    rq_job.retries_left = 0
    wait_for(lambda: store.lease_alive(j), lambda alive: not alive, timeout=10)
    rq_runner.train_failed(rq_job, store.redis, StoreUnavailable, StoreUnavailable("away"), None)
    assert rq_job.retries_left == 1 and store.get_job(j).status == "running"  # RQ retries it; none used up
    rq_job.retries_left = 0
    worker = rq_runner.TrainingWorker([queue], connection=store.redis, worker_ttl=rq_runner.WORKER_TTL)
    worker.register_birth()
    try:
        rq_job.worker_name = worker.name  # abandoned while its worker heartbeats: an outage, not a death
        worker.heartbeat()
        rq_runner.train_failed(rq_job, store.redis, AbandonedJobError, AbandonedJobError(), None)
        assert rq_job.retries_left == 1 and store.get_job(j).status == "running"
    finally:
        worker.register_death()
    rq_job.retries_left = 0  # its worker is dead now (no heartbeat for over a lease): the job fails as before
    store.redis.hset(worker.key, "last_heartbeat", "2020-01-01T00:00:00.000000Z")
    rq_runner.train_failed(rq_job, store.redis, AbandonedJobError, AbandonedJobError(), None)
    assert store.get_job(j).status == "failed" and "its worker died" in store.get_job(j).error
    store.redis.delete(worker.key)
