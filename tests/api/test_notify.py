"""Job notifications (api/notify.py) against a real receiver on loopback, on both backends: the final job
record arrives signed (HMAC-SHA256 with the job's secret), a 500 is retried, hosts outside NN_NOTIFY_ALLOW
and non-http(s) URLs are refused at submit, and a pending delivery survives a restart of the service."""

import hashlib
import hmac
import json
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.api.conftest import IRIS, X4, Y3, backend_app, run_queued, wait_for, wait_job
from tests.api.storage.test_store_contract import store  # noqa: F401 - a real store on each backend
from tests.servers import start_server, stop_server

SECRET = "s3cret-for-tests"
FAST = {"notify_allow": "127.0.0.1", "notify_interval": 0.05, "notify_backoff": 0.05}


class Receiver:
    """An HTTP server on loopback that records each POST and answers the next status of ``answers`` (then 200)."""

    def __init__(self, answers=(), endless=False, trickle=False, together=1):
        self.answers, self.received = list(answers), []
        self.together = threading.Barrier(together)  # answers only once this many requests are in
        self.endless, self.trickle, self.closing, self.abandoned = endless, trickle, threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.answers.pop(0) if receiver.answers else 200
                receiver.received.append((dict(self.headers), body, status))
                try:
                    receiver.together.wait(60)
                except threading.BrokenBarrierError:  # the test ended first: no answer
                    return
                if receiver.trickle:  # a head that never ends: a header line every 0.2 s until the test ends
                    self.close_connection = True
                    try:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
                        while not receiver.closing.wait(0.2):
                            self.wfile.write(b"X-Slow: 1\r\n")
                            self.wfile.flush()
                    except OSError:  # the deliverer gave up and closed the connection
                        receiver.abandoned.set()
                    return
                self.send_response(status)
                if receiver.endless:  # a gigabyte promised, none sent until the test ends
                    self.send_header("Content-Length", str(10**9))
                    self.end_headers()
                    self.wfile.flush()
                    receiver.closing.wait(60)
                    return
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.closing.set()
        self.together.abort()
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def receiver(answers=(), endless=False, trickle=False, together=1):
    r = Receiver(answers, endless, trickle, together)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    return request.param


def submit(client, url, waiting=False):
    """A job that trains on inline samples, or (``waiting``) one that waits in buffering for 100 samples."""
    body = {"min_samples": 100} if waiting else {"inputs": X4, "targets": Y3, "epochs": 3}
    response = client.post("/models/iris/training-jobs", json={**body, "notify": {"url": url, "secret": SECRET}})
    assert response.status_code == 202, response.text
    return response.json()


def verified(headers: dict, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["X-NN-Signature"], expected)


def test_the_final_record_arrives_signed(backend, tmp_path):
    with receiver() as r, backend_app(backend, tmp_path, **FAST) as client:
        client.post("/models", json=IRIS)
        job = submit(client, r.url)
        assert job["notify"] == {"url": r.url, "status": "pending", "attempts": 0, "last_error": None,
                                 "last_attempt_at": None, "next_attempt_at": None, "delivered_at": None}
        assert SECRET not in json.dumps(job)
        run_queued(client)
        wait_for(lambda: r.received, bool)
        headers, body, _ = r.received[0]
        assert verified(headers, body) and headers["Content-Type"] == "application/json"
        assert headers["X-NN-Event"] == "job.succeeded"
        record = json.loads(body)
        assert record["job_id"] == job["job_id"] and record["status"] == "succeeded" and record["metrics"]
        assert "notify" not in record and SECRET not in body.decode()
        shown = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] == "delivered")
        assert shown["attempts"] == 1 and shown["delivered_at"] and shown["last_error"] is None
        assert len(r.received) == 1


def test_a_cancelled_job_notifies_too_and_a_500_is_retried(backend, tmp_path):
    with receiver(answers=[500]) as r, backend_app(backend, tmp_path, **FAST) as client:
        client.post("/models", json=IRIS)
        job = submit(client, r.url, waiting=True)  # waits in buffering
        client.post(f"/jobs/{job['job_id']}/cancel")
        shown = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] == "delivered")
        assert shown["attempts"] == 2 and [status for _, _, status in r.received] == [500, 200]
        assert all(verified(h, b) for h, b, _ in r.received)
        assert json.loads(r.received[1][1])["status"] == "cancelled"


def test_delivery_gives_up_after_the_retry_window(backend, tmp_path):
    with receiver(answers=[500] * 100) as r, backend_app(backend, tmp_path, **FAST, notify_retry_seconds=0.2) as client:
        client.post("/models", json=IRIS)
        job = submit(client, r.url, waiting=True)
        client.post(f"/jobs/{job['job_id']}/cancel")
        shown = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] == "failed")
        assert shown["last_error"] == "HTTP 500 from the receiver" and shown["attempts"] == len(r.received) >= 1


@pytest.mark.parametrize("url, allow, message", [
    ("http://10.0.0.1/hook", "127.0.0.1", "host '10.0.0.1' is not allowed; allowed hosts (NN_NOTIFY_ALLOW): 127.0.0.1"),
    ("http://127.0.0.1/hook", "", "NN_NOTIFY_ALLOW is empty"),
    ("http://evil.example.org/hook", "*.example.com", "not allowed"),
    ("ftp://127.0.0.1/hook", "127.0.0.1", "http:// or https://"),
    ("http://user:pw@127.0.0.1/hook", "127.0.0.1", "must not hold credentials"),
    ("not a url", "127.0.0.1", "holds a space or a control character"),
    # accepted, then never deliverable: httpx.InvalidURL escaped the deliverer and stopped every later notification
    ("http://127.0.0.1/hook\r\nX-Injected: 1", "127.0.0.1", "holds a space or a control character"),
    (" http://127.0.0.1/hook", "127.0.0.1", "holds a space or a control character"),
    ("http://127.0.0.1:0/hook", "127.0.0.1", "has port 0"),
])
def test_refused_urls_are_422_at_submit(tmp_path, url, allow, message):
    with backend_app("sqlite", tmp_path, notify_allow=allow) as client:
        client.post("/models", json=IRIS)
        body = {"inputs": X4, "targets": Y3, "notify": {"url": url, "secret": SECRET}}
        for path, extra in (("training-jobs", {}), ("search-jobs", {"space": {"learning_rate": [0.1]}, "folds": 2})):
            response = client.post(f"/models/iris/{path}", json={**body, **extra})
            assert response.status_code == 422 and message in response.json()["detail"], response.text
        assert client.get("/jobs").json()["count"] == 0  # nothing was stored


def test_a_notification_that_cannot_be_sent_fails_alone_and_the_next_one_is_delivered(backend, tmp_path, monkeypatch):
    """A URL httpx refuses to send to (stored before submit refused it) raised out of the round: that notification
    stayed due at the head of every round, and no later one was ever sent."""
    import api.notify

    with receiver() as r, backend_app(backend, tmp_path, **FAST, notify_retry_seconds=0.2) as client:
        client.post("/models", json=IRIS)
        with monkeypatch.context() as patched:  # as a service before the check stored it
            patched.setattr(api.notify, "check_url", lambda *a: None)
            poisoned = submit(client, "http://127.0.0.1/hook\r\nX-Injected: 1", waiting=True)
            client.post(f"/jobs/{poisoned['job_id']}/cancel")
            shown = wait_for(lambda: client.get(f"/jobs/{poisoned['job_id']}").json()["notify"],
                             lambda n: n["status"] == "failed")
            assert "InvalidURL" in shown["last_error"]
        job = submit(client, r.url, waiting=True)
        client.post(f"/jobs/{job['job_id']}/cancel")
        wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] == "delivered")


def test_the_receivers_body_is_never_read(tmp_path):
    """A receiver that answers 200 and promises a gigabyte: the body was read (400 MB took the API process from 90
    to 565 MB; one sent a byte every 2 s held the deliverer 40 s). The status line is the answer."""
    with receiver(endless=True) as r, backend_app("sqlite", tmp_path, **FAST, notify_timeout=30) as client:
        client.post("/models", json=IRIS)
        job = submit(client, r.url, waiting=True)
        client.post(f"/jobs/{job['job_id']}/cancel")
        shown = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] != "pending")
        assert shown["status"] == "delivered" and shown["attempts"] == 1, shown


def test_a_receiver_that_never_finishes_its_head_holds_no_other_notification(tmp_path):
    """NN_NOTIFY_TIMEOUT bounded each read, not the request: a receiver sending a header line every second held the
    one deliverer, and every other job's notification, for as long as it kept sending."""
    with receiver(trickle=True) as slow, receiver() as fine, \
            backend_app("sqlite", tmp_path, **FAST, notify_timeout=0.5) as client:
        client.post("/models", json=IRIS)
        stuck = submit(client, slow.url, waiting=True)
        client.post(f"/jobs/{stuck['job_id']}/cancel")
        wait_for(lambda: slow.received, bool)  # the deliverer is in its attempt
        job = submit(client, fine.url, waiting=True)
        client.post(f"/jobs/{job['job_id']}/cancel")
        wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["status"] == "delivered")
        shown = client.get(f"/jobs/{stuck['job_id']}").json()["notify"]
        assert shown["status"] == "pending" and shown["last_error"] == "TimeoutError: no answer within 0.5 s (NN_NOTIFY_TIMEOUT)"
        assert slow.abandoned.wait(30), "the stuck attempt's connection was never closed"


def test_the_notifications_of_a_round_are_attempted_side_by_side(store, tmp_path):
    """A round sent its notifications one after the other: a slow receiver held every other job's notification for
    NN_NOTIFY_TIMEOUT each (20 of them, 20 times that), and on Redis a round of slow ones outlived its claims. Here
    the receiver answers only once both of a round's notifications are in: one after the other, both time out."""
    from api.notify import Deliverer
    from api.storage.base import Notification
    from tests.api.conftest import settings_for
    from tests.api.storage.test_store_contract import job

    with receiver(together=2) as r:
        store.create_model("m", b"blob", {"n": 1})
        for _ in range(2):
            waiting = store.create_job(job("m", min_samples=10))
            store.add_notification(Notification(job_id=waiting.job_id, url=r.url, secret=SECRET))
            store.cancel_job(waiting.job_id)
        deliverer = Deliverer(store, settings_for(tmp_path, notify_allow="127.0.0.1", notify_timeout=30))
        try:
            assert deliverer.run_once() == 2
        finally:
            deliverer.stop()
        shown = store.get_notifications([h["X-NN-Delivery"].split(".")[0] for h, _, _ in r.received])
        assert [n.status for n in shown.values()] == ["delivered", "delivered"], shown


def test_subdomain_patterns_are_allowed(tmp_path):
    with backend_app("sqlite", tmp_path, notify_allow="*.example.com") as client:
        client.post("/models", json=IRIS)
        response = client.post("/models/iris/training-jobs", json={"min_samples": 10, "notify": {
            "url": "https://hooks.example.com/nn", "secret": SECRET}})
        assert response.status_code == 202 and response.json()["notify"]["status"] == "pending"


def test_a_search_job_notifies(tmp_path):
    with receiver() as r, backend_app("sqlite", tmp_path, **FAST) as client:
        client.post("/models", json=IRIS)
        job = client.post("/models/iris/search-jobs", json={"inputs": X4, "targets": Y3, "space": {"learning_rate": [0.1]},
                                                            "folds": 2, "epochs": 2,
                                                            "notify": {"url": r.url, "secret": SECRET}}).json()
        client.post(f"/jobs/{job['job_id']}/cancel")
        wait_for(lambda: r.received, bool)
        record = json.loads(r.received[0][1])
        assert record["kind"] == "search" and record["status"] == "cancelled" and verified(*r.received[0][:2])


def test_a_pending_delivery_survives_a_restart_sqlite(tmp_path):
    """A real service answers 500s' retries until it stops; the next one on the same data directory delivers."""
    import httpx

    env = {"NN_NOTIFY_ALLOW": "127.0.0.1", "NN_NOTIFY_INTERVAL": "0.05", "NN_NOTIFY_BACKOFF": "0.05"}
    with receiver(answers=[500] * 1000) as r:
        url, process = start_server(tmp_path, **env)
        try:
            httpx.post(f"{url}/models", json=IRIS)
            job = httpx.post(f"{url}/models/iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 3,
                                                                       "notify": {"url": r.url, "secret": SECRET}}).json()
            wait_for(lambda: httpx.get(f"{url}/jobs/{job['job_id']}").json(),
                     lambda j: j["status"] == "succeeded" and j["notify"]["attempts"] >= 1)
        finally:
            stop_server(process)
        r.answers.clear()  # the receiver is fixed while the service is down
        tried = len(r.received)
        url, process = start_server(tmp_path, **env)
        try:
            shown = wait_for(lambda: httpx.get(f"{url}/jobs/{job['job_id']}").json()["notify"],
                             lambda n: n["status"] == "delivered")
            assert shown["attempts"] == len(r.received) > tried and r.received[-1][2] == 200
            assert verified(*r.received[-1][:2]) and json.loads(r.received[-1][1])["status"] == "succeeded"
        finally:
            stop_server(process)


def test_a_pending_delivery_survives_a_restart_redis(tmp_path):
    """Replica processes share Redis: one that stops leaves the delivery pending, a new one delivers it."""
    import uuid

    prefix = f"t-{uuid.uuid4().hex[:8]}"
    with receiver(answers=[500] * 1000) as r:
        with backend_app("redis", tmp_path, **FAST, redis_prefix=prefix, keep_data=True) as client:
            client.post("/models", json=IRIS)
            job = submit(client, r.url)
            run_queued(client)
            wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"], lambda n: n["attempts"] >= 1)
        r.answers.clear()
        with backend_app("redis", tmp_path, **FAST, redis_prefix=prefix) as client:
            shown = wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json()["notify"],
                             lambda n: n["status"] == "delivered")
            assert shown["attempts"] == len(r.received) and verified(*r.received[-1][:2])



def test_the_delay_between_attempts_doubles_up_to_five_minutes_even_after_many(tmp_path):
    """The backoff, on a real store and a closed port: no float overflow after thousands of attempts
    (possible with a long NN_NOTIFY_RETRY_SECONDS)."""
    from api.notify import MAX_DELAY, Deliverer
    from api.storage.base import JobRecord, Notification
    from api.storage.sqlite import SQLiteStore
    from tests.api.conftest import settings_for

    store = SQLiteStore(tmp_path / "nn.sqlite3")
    store.create_model("m", b"blob", {"n": 1})
    job = store.create_job(JobRecord(job_id="j", model_id="m", model_uid="", status="buffering", params={},
                                     min_samples=10, consume_buffer=True, created_at=0.0))
    store.add_notification(Notification(job_id="j", url="http://127.0.0.1:9/closed", secret=SECRET))
    job = store.cancel_job(job.job_id)
    deliverer = Deliverer(store, settings_for(tmp_path, notify_allow="127.0.0.1", notify_backoff=0.05,
                                              notify_retry_seconds=10**9))
    for attempts, delay in ((0, 0.05), (3, 0.4), (5000, MAX_DELAY)):
        note = Notification(job_id="j", url="http://127.0.0.1:9/closed", secret=SECRET, attempts=attempts)
        assert deliverer.deliver(note, job) == "pending"
        kept = store.get_notifications(["j"])["j"]
        assert kept.next_attempt_at - kept.last_attempt_at == pytest.approx(delay) and kept.last_error
    deliverer.stop()


def test_while_the_store_is_away_each_round_logs_one_line_and_rounds_slow_down(caplog):
    """A replica whose Redis does not answer logged a traceback every 0.5 s (27 in 14 s): now one line per round,
    no traceback, and the rounds back off to one a minute; a round that works brings the interval back."""
    import logging

    from api.notify import Deliverer
    from api.settings import Settings
    from api.storage.redis_store import RedisStore

    settings = Settings(notify_interval=0.5)
    deliverer = Deliverer(RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.2), settings)
    with caplog.at_level(logging.WARNING, logger="api.notify"):
        assert deliverer.round() is False
    [record] = caplog.records
    assert record.exc_info is None and "unreachable" in record.getMessage()
    assert [deliverer.delay(n) for n in (0, 1, 2, 7, 8, 50)] == [0.5, 1.0, 2.0, 60.0, 60.0, 60.0]


def test_a_silent_receiver_is_one_timeout_in_one_wording(tmp_path):
    """httpx's read timeout and the attempt's deadline were both NN_NOTIFY_TIMEOUT, so a receiver that never answers
    was recorded as "TimeoutError: no answer within 0.3 s" or "ReadTimeout: timed out", whichever fired first."""
    from api.notify import Deliverer
    from tests.api.conftest import settings_for

    with receiver(together=99) as silent:  # never answers: the barrier waits for 99 requests
        deliverer = Deliverer(None, settings_for(tmp_path, notify_allow="127.0.0.1", notify_timeout=0.3))
        try:
            for _ in range(3):
                with pytest.raises(TimeoutError, match=r"^no answer within 0.3 s \(NN_NOTIFY_TIMEOUT\)$"):
                    deliverer._send(silent.url, b"{}", {"Content-Type": "application/json"})
        finally:
            deliverer.stop()
