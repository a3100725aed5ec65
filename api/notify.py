"""Job notifications: when a job with ``notify`` ends, its final record is POSTed to the URL, signed.

The notification is stored beside the job (written just before it) with its delivery state, so a
restart loses nothing: a `Deliverer` thread in every API process (and every API replica with
NN_BACKEND=redis, where a claim key keeps two replicas from sending one notification at once) looks
for pending notifications of ended jobs, POSTs the job record, and on anything but a 2xx retries
with doubling delays until NN_NOTIFY_RETRY_SECONDS after the job's end. At least once: a receiver
may see a notification twice (after a crash between its answer and the record of it), so it should
treat the job id as the delivery's idempotency key.

Only http(s) URLs whose host is listed in NN_NOTIFY_ALLOW are accepted (checked at submit, and again
before each attempt), redirects are not followed: the service cannot be made to probe its own network.
"""

import hashlib
import hmac
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from urllib.parse import urlsplit

import httpx

from api.errors import InvalidInput, StoreUnavailable
from api.schemas import JobPublic
from api.settings import Settings
from api.storage.base import JobRecord, Notification, Store

log = logging.getLogger("api.notify")

MAX_DELAY = 300.0  # seconds: the longest wait between two attempts
BATCH = 20  # notifications taken per look, attempted side by side: a round lasts at most NN_NOTIFY_TIMEOUT


def allowed_hosts(setting: str) -> list[str]:
    return [h.strip().lower().strip("[]") for h in setting.split(",") if h.strip()]


def host_allowed(host: str, allow: list[str]) -> bool:
    """Exact names or IPs, or ``*.example.com`` for its subdomains."""
    host = host.lower()
    return any(host == entry or (entry.startswith("*.") and host.endswith(entry[1:])) for entry in allow)


def check_url(url: str, allow_setting: str) -> None:
    """Raises InvalidInput unless ``url`` is http(s), has no credentials, and its host is allowed: a URL the
    deliverer could not send to is refused here, not retried for NN_NOTIFY_RETRY_SECONDS."""
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):  # a space, \r\n (header injection), \t, \x00 ...
        raise InvalidInput(f"notify.url {url!r} holds a space or a control character; send the URL alone, "
                           "percent-encoding any such character (%20)")
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a bad port
        httpx.URL(url)  # what the deliverer will send to
    except (ValueError, httpx.InvalidURL) as exc:
        raise InvalidInput(f"notify.url {url!r} is not a valid URL ({exc}); send e.g. https://hooks.example.com/nn") from None
    if port == 0:
        raise InvalidInput(f"notify.url {url!r} has port 0, which nothing listens on; send the receiver's port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"notify.url must be an http:// or https:// URL with a host, e.g. https://hooks.example.com/nn; "
                           f"got {url!r}")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("notify.url must not hold credentials; the receiver checks X-NN-Signature with notify.secret")
    allow = allowed_hosts(allow_setting)
    if not host_allowed(parts.hostname, allow):
        listed = ", ".join(allow) if allow else "none: NN_NOTIFY_ALLOW is empty, so notifications are off"
        raise InvalidInput(f"notify.url host {parts.hostname!r} is not allowed; allowed hosts (NN_NOTIFY_ALLOW): {listed}")


def sign(body: bytes, secret: str) -> str:
    """The X-NN-Signature header value: ``sha256=`` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def payload(job: JobRecord) -> bytes:
    """The final job record as GET /jobs/{job_id} shows it, without the notification itself."""
    return json.dumps(JobPublic.from_record(job).model_dump(mode="json", exclude={"notify"})).encode()


class Deliverer:
    """Sends due notifications; ``run_once`` does one round, ``start`` runs rounds in a thread."""

    def __init__(self, store: Store, settings: Settings):
        self.store, self.settings = store, settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=BATCH, thread_name_prefix="nn-notify-deliver")

    def run_once(self, now: float | None = None) -> int:
        """Attempts every notification due now, side by side; returns how many were attempted. One after the
        other, a round of 20 slow receivers took 20 x NN_NOTIFY_TIMEOUT: every other job's notification waited,
        and on Redis the round outlived its claims (2 minutes), so another replica sent the same ones again."""
        due = self.store.due_notifications(time.time() if now is None else now, BATCH)
        attempts = [self._pool.submit(self.deliver, note, job) for note, job in due]
        wait(attempts)
        for attempt in attempts:  # an error recording an attempt (the store away) fails the round, once all ended
            attempt.result()
        return len(due)

    def deliver(self, note: Notification, job: JobRecord) -> str:
        body = payload(job)
        error = None
        try:
            check_url(note.url, self.settings.notify_allow)  # the allow list may have changed since submit
            status = self._send(note.url, body, {
                "Content-Type": "application/json", "User-Agent": "nn-service-notify",
                "X-NN-Signature": sign(body, note.secret), "X-NN-Event": f"job.{job.status}",
                "X-NN-Delivery": f"{job.job_id}.{note.attempts + 1}"})
            if not 200 <= status < 300:
                error = f"HTTP {status} from the receiver"
        except InvalidInput as exc:
            error = str(exc)
        except Exception as exc:  # httpx's errors, and any other the send raises: this notification's, never the round's
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        now = time.time()
        if error is None:
            status, next_at = "delivered", now
        else:
            next_at = now + min(MAX_DELAY, self.settings.notify_backoff * 2.0 ** min(note.attempts, 30))
            ended = job.finished_at or now
            status = "failed" if next_at - ended > self.settings.notify_retry_seconds else "pending"
        self.store.record_attempt(job.job_id, status=status, error=error, next_attempt_at=next_at, now=now)
        log.log(logging.INFO if error is None else logging.WARNING, "job %s: notification %s (attempt %d)%s",
                job.job_id, status, note.attempts + 1, f": {error}" if error else "")
        return status

    def _send(self, url: str, body: bytes, headers: dict) -> int:
        """The receiver's status, within NN_NOTIFY_TIMEOUT in all. httpx bounds each read, not the request: a
        receiver that sent its head a byte at a time held its attempt as long as it liked. The attempt runs in a
        thread of its own with a client of its own; past the deadline that client is closed, which ends the attempt
        at its next read. The response is streamed and closed on its status line: its body is never read, so a
        huge one holds no memory."""
        client, result = httpx.Client(follow_redirects=False, trust_env=False), {}

        def attempt() -> None:
            try:
                # httpx's own bound a second later than the deadline below, which alone ends a silent attempt:
                # at the same value either fired first, so one timeout was recorded in two wordings
                with client.stream("POST", url, content=body, headers=headers,
                                   timeout=self.settings.notify_timeout + 1.0) as response:
                    result["status"] = response.status_code
            except Exception as exc:  # noqa: BLE001 - handed to the deliverer, which records it
                result["error"] = exc

        thread = threading.Thread(target=attempt, name="nn-notify-send", daemon=True)
        thread.start()
        thread.join(self.settings.notify_timeout)
        client.close()
        if thread.is_alive():
            raise TimeoutError(f"no answer within {self.settings.notify_timeout:g} s (NN_NOTIFY_TIMEOUT)")
        if "error" in result:
            raise result["error"]
        return result["status"]

    def round(self) -> bool:
        """Looks for due notifications (again at once while batches are full); False when the round failed."""
        try:
            while self.run_once() and not self._stop.is_set():
                pass
            return True
        except StoreUnavailable as exc:  # the store away (503 elsewhere): one line, not a traceback every round
            log.warning("notifications wait for the store: %s", exc)
        except Exception:
            log.warning("notification round failed; retrying", exc_info=True)
        return False

    def delay(self, failures: int) -> float:
        """Seconds before the next round: NN_NOTIFY_INTERVAL, doubled after each failed round up to a minute."""
        return min(max(60.0, self.settings.notify_interval), self.settings.notify_interval * 2.0 ** min(failures, 20))

    def _loop(self) -> None:
        failures = 0
        while not self._stop.wait(self.delay(failures)):
            failures = 0 if self.round() else failures + 1

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="nn-notify", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
