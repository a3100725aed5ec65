"""The service as users run it: `python main.py` on loopback, driven over HTTP; SIGKILL and restart."""

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import uvicorn
from uvicorn.server import ServerState

from neural_net import Network
from api.server import BODY_BUFFER_BYTES, BoundedHeadProtocol
from api.specs import FitConfig
from api.storage.sqlite import SQLiteStore
from tests.api.conftest import X4, Y3, wait_for
from tests.api.routes.test_jobs import BLOBS_X, BLOBS_Y
from tests.conftest import ROOT, free_port, start_server, stop_server

TERMINAL = {"succeeded", "failed", "cancelled"}


def poll_job(url, job_id, until=TERMINAL, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{url}/jobs/{job_id}", timeout=5).json()
        if job["status"] in until:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job still {job['status']} after {timeout} s")
        time.sleep(0.02)


def test_quick_start_with_a_live_event_stream(server):
    post = lambda path, body: httpx.post(f"{server}{path}", json=body, timeout=10)  # noqa: E731
    assert post("/models", {"model_id": "qs", "layer_sizes": [4, 8, 3], "activations": ["relu", "softmax"],
                             "seed": 0}).status_code == 201
    job = post("/models/qs/training-jobs", {"min_samples": 6, "epochs": 200, "batch_size": 2, "learning_rate": 0.01})
    assert job.status_code == 202 and job.json()["status"] == "buffering"
    assert post("/models/qs/samples", {"inputs": X4, "targets": Y3}).json()["buffer_size"] in (0, 6)

    events = []
    with httpx.stream("GET", f"{server}{job.headers['location']}/events", timeout=30) as stream:
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "end" and events[-1][1]["status"] == "succeeded"
    percents = [data["progress"]["percent"] for name, data in events[:-1] if data.get("progress")]
    assert percents == sorted(percents)
    predicted = post("/models/qs/output", {"inputs": X4}).json()
    assert predicted["model_version"] == 2 and len(predicted["predictions"]) == 6


def test_requests_answer_quickly_while_a_job_trains(server):
    for model_id in ("busy", "other"):
        httpx.post(f"{server}/models", json={"model_id": model_id, "layer_sizes": [4, 64, 2],
                                              "activations": ["relu", "softmax"]}, timeout=10)
    job = httpx.post(f"{server}/models/busy/training-jobs", json={"inputs": BLOBS_X, "targets": BLOBS_Y,
                                                                   "epochs": 10_000, "batch_size": 1}, timeout=10).json()
    poll_job(server, job["job_id"], until={"running"})
    # Training runs in a worker process, so the API answers while the job trains. Were training on
    # the event loop, these requests would wait for the whole 10,000-epoch job. (How fast they
    # answer under load is measured by bench/load.py, not asserted here: CI machines are noisy.)
    for _ in range(20):
        assert httpx.get(f"{server}/jobs/{job['job_id']}", timeout=30).status_code == 200
        assert httpx.post(f"{server}/models/other/output", json={"input": X4[0]}, timeout=30).status_code == 200
    assert httpx.get(f"{server}/jobs/{job['job_id']}", timeout=5).json()["status"] == "running"
    httpx.post(f"{server}/jobs/{job['job_id']}/cancel", timeout=5)
    assert poll_job(server, job["job_id"])["status"] == "cancelled"


def test_a_job_interrupted_by_sigkill_resumes_bitwise_after_restart(tmp_path):
    url, process = start_server(tmp_path, NN_PROGRESS_INTERVAL="0.05", NN_POLL_INTERVAL="0.05")
    try:
        httpx.post(f"{url}/models", json={"model_id": "r", "layer_sizes": [4, 16, 2],
                                          "activations": ["relu", "softmax"], "seed": 0}, timeout=10)
        initial = httpx.get(f"{url}/models/r/export", timeout=10).content
        params = {"epochs": 150, "batch_size": 4, "learning_rate": 0.01, "seed": 5, "dropout": [0.1, 0.0]}
        job = httpx.post(f"{url}/models/r/training-jobs", json={"inputs": BLOBS_X, "targets": BLOBS_Y, **params},
                         timeout=10).json()
        deadline = time.monotonic() + 30
        while httpx.get(f"{url}/jobs/{job['job_id']}", timeout=5).json()["epochs_completed"] < 2:
            assert time.monotonic() < deadline, "the job did not start"
            time.sleep(0.01)
    finally:
        process.kill()  # SIGKILL: no shutdown, the job is left 'running'
        process.wait()
    interrupted = SQLiteStore(tmp_path / "nn.sqlite3").get_job(job["job_id"])
    assert interrupted.status == "running" and 2 <= interrupted.epochs_done < 150

    url, process = start_server(tmp_path)
    try:
        done = poll_job(url, job["job_id"])
        final = Network.from_bytes(httpx.get(f"{url}/models/r/export", timeout=10).content)
    finally:
        stop_server(process)
    assert done["status"] == "succeeded" and [h["epoch"] for h in done["history"]] == list(range(1, 151))

    # the same training without interruption, in this process
    net = Network.from_bytes(initial)
    net.rng = np.random.default_rng(5)
    for layer, rate in zip(net.layers, [0.1, 0.0]):
        layer.dropout = rate
    x = np.asarray(BLOBS_X, dtype=np.float32)
    y = np.eye(2, dtype=np.float32)[BLOBS_Y]
    net.fit(x, y, **FitConfig.from_params(done["params"]).fit_kwargs())
    np.testing.assert_array_equal(final._flat, net._flat)


def test_uvicorn_main_app_works(tmp_path):
    port = free_port()
    env = {**os.environ, "NN_DATA_DIR": str(tmp_path), "NN_WORKERS": "0"}
    process = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:app", "--port", str(port)], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except httpx.HTTPError:
                assert process.poll() is None and time.monotonic() < deadline, "uvicorn main:app did not start"
                time.sleep(0.1)
        assert health.json()["status"] == "ok" and health.json()["workers"] == 0
    finally:
        stop_server(process)


def test_a_second_service_on_the_same_data_dir_says_so_in_one_line(tmp_path):
    url, first = start_server(tmp_path)
    try:
        env = {**os.environ, "NN_PORT": str(free_port()), "NN_DATA_DIR": str(tmp_path), "NN_WORKERS": "1"}
        second = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1
        assert second.stderr.strip() == (f"error: another service is using {tmp_path.resolve()}; "
                                         "stop it or set another NN_DATA_DIR"), second.stderr
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # the first one is untouched
    finally:
        stop_server(first)


def test_uvicorn_main_app_on_a_data_dir_in_use_says_so_in_one_line(tmp_path):
    url, first = start_server(tmp_path)
    try:
        env = {**os.environ, "NN_DATA_DIR": str(tmp_path), "NN_WORKERS": "1"}
        second = subprocess.run([sys.executable, "-m", "uvicorn", "main:app", "--port", str(free_port())], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=60)
        output = second.stdout + second.stderr
        assert second.returncode != 0, output
        assert (f"another service is using {tmp_path.resolve()}; stop it or set another NN_DATA_DIR" in output), output
        assert "Traceback" not in output and "Exception in 'lifespan' protocol" not in output, output
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # the first one is untouched
    finally:
        stop_server(first)


def test_a_damaged_database_refuses_to_start_in_one_line(tmp_path):
    from tests.api.storage.test_sqlite import damaged_database

    path = damaged_database(tmp_path)
    env = {**os.environ, "NN_PORT": str(free_port()), "NN_DATA_DIR": str(tmp_path), "NN_WORKERS": "0"}
    started = subprocess.run([sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 1
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: the database {path} cannot be used"), started.stderr
    assert ".recover" in lines[0]


def closed_by_server(sock, timeout: float) -> bool:
    """True when the server closes the connection within `timeout` s (recv gives b"" or a reset)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if sock.recv(1024) == b"":
                return True
        except socket.timeout:
            continue
        except ConnectionResetError:
            return True
    return False


def test_connections_that_never_finish_their_headers_are_closed(tmp_path):
    url, process = start_server(tmp_path, NN_WORKERS=0, NN_HEADER_TIMEOUT=1)
    port = int(url.rsplit(":", 1)[1])
    try:
        slow = []
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
            slow.append(sock)
        keep_alive = socket.create_connection(("127.0.0.1", port))  # a finished request, then a slow second one
        keep_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert keep_alive.recv(4096).startswith(b"HTTP/1.1 200")
        keep_alive.sendall(b"GET /health HTTP/1.1\r\n")
        assert all(closed_by_server(sock, timeout=15) for sock in [*slow, keep_alive])
        assert httpx.get(f"{url}/health", timeout=5).status_code == 200  # complete requests still get through
    finally:
        for sock in slow:
            sock.close()
        stop_server(process)



def test_a_body_that_stops_arriving_is_a_408_and_the_connection_closes(tmp_path):
    """The app's receive had no deadline: an upload whose body stalled held its connection and its upload folder
    for ever (seen after 25 s on /datasets and /v2 infer). A body that arrives, slowly or whole, is still served."""
    url, process = start_server(tmp_path, NN_WORKERS=0, NN_BODY_TIMEOUT=1)
    port = int(url.rsplit(":", 1)[1])
    try:
        stalled = []
        for path in (b"/datasets", b"/v2/models/m/infer", b"/models"):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\nContent-Length: 100\r\n\r\na,b\n" % path)
            stalled.append(sock)
        for sock in stalled:
            sock.settimeout(30)
            answer = b""
            while b"}" not in answer:
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and b"NN_BODY_TIMEOUT" in answer, answer
            assert closed_by_server(sock, timeout=15)
            sock.close()
        # the stalled upload's folder goes with it, once the app has seen the disconnect
        wait_for(lambda: os.listdir(tmp_path / "datasets" / ".tmp"), lambda left: left == [], timeout=15)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # pipelined behind a GET: its timer was cancelled
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                         b"POST /models HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabcd")
            sock.settimeout(30)
            answer = b""
            while answer.count(b"HTTP/1.1 ") < 2 or not answer.endswith(b"}"):
                answer += sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer, answer
        created = httpx.post(f"{url}/models", json={"model_id": "m", "layer_sizes": [2, 1]}, timeout=10)
        assert created.status_code == 201, created.text
    finally:
        stop_server(process)


@pytest.mark.parametrize("trusted", ["", "127.0.0.1"])
def test_x_forwarded_for_is_believed_only_from_the_proxies_named(tmp_path, trusted):
    """uvicorn believes X-Forwarded-For from 127.0.0.1 by default: any local client (or a proxy passing the header
    on) wrote what it liked into the access log, e.g. a fake DELETE line in front of its own."""
    log = open(tmp_path / "server.log", "w")
    url, process = start_server(tmp_path / "data", log=log, NN_WORKERS=0, NN_FORWARDED_ALLOW_IPS=trusted)
    try:
        forged = '6.6.6.6 - "DELETE /models/iris HTTP/1.1" 204'
        assert httpx.get(f"{url}/health", headers={"X-Forwarded-For": forged}, timeout=10).status_code == 200
    finally:
        stop_server(process)
        log.close()
    access = [line for line in (tmp_path / "server.log").read_text().splitlines() if '"GET /health' in line]
    assert access and any("6.6.6.6" in line for line in access) == bool(trusted), access

def test_a_body_waiting_on_a_lagging_app_or_on_100_continue_is_no_stall():
    """The body timer counts only while the service waits for the client: not while reading is paused because the
    app has not read what it has (here 4 MB, the app busy for 10 timeouts), nor while the client waits for the
    100 Continue the app's first receive sends."""
    async def scenario(expect_continue: bool) -> bytes:
        release = asyncio.Event()

        async def app(scope, receive, send):
            if scope["type"] == "http":
                await release.wait()
                more = True
                while more:
                    more = (await receive()).get("more_body", False)
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})

        protocol_class = type("Quick", (BoundedHeadProtocol,), {"body_timeout": 0.05})
        config = uvicorn.Config(app, http=protocol_class, lifespan="off", log_level="warning")
        config.load()
        server = await asyncio.get_running_loop().create_server(
            lambda: config.http_protocol_class(config=config, server_state=ServerState(), app_state={}), "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        size = 4 * BODY_BUFFER_BYTES
        head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % size
        writer.write(head + (b"Expect: 100-continue\r\n\r\n" if expect_continue else b"\r\n"))
        if not expect_continue:
            writer.write(b"x" * size)
        await asyncio.sleep(0.5)  # 10 body timeouts with nothing read by the app
        release.set()
        if expect_continue:
            assert (await reader.readline()).startswith(b"HTTP/1.1 100")
            await reader.readline()
            writer.write(b"x" * size)
        status = await reader.readline()
        writer.close()
        server.close()
        return status

    for expect_continue in (False, True):
        status = asyncio.run(scenario(expect_continue))
        assert status.startswith(b"HTTP/1.1 204"), (expect_continue, status)


def test_a_request_head_over_16_kib_is_a_400_and_the_connection_closes(tmp_path):
    """httptools has no bound of its own on a request head (h11 had uvicorn's 16 KiB): headers sent without end
    would have grown the server's memory until the header timeout. Bodies are not heads: 3 MB still get in."""
    url, process = start_server(tmp_path, NN_WORKERS=0)
    port = int(url.rsplit(":", 1)[1])
    try:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-Filler: " + b"a" * 8000 + b"\r\n")
            sock.sendall(b"X-More: " + b"b" * 9000 + b"\r\n\r\n")
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 400"), answer
            assert closed_by_server(sock, timeout=5)
        with socket.create_connection(("127.0.0.1", port)) as sock:  # just under the bound: served
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Filler: " + b"a" * 15000 + b"\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        big = httpx.post(f"{url}/models/none/output", content=b" " * 3_000_000, timeout=30,
                         headers={"Content-Type": "application/json"})
        assert big.status_code in (404, 422), big.text  # read in full and answered, not refused as a head
    finally:
        stop_server(process)

def test_a_body_the_app_does_not_read_yet_is_buffered_up_to_a_megabyte_then_reading_pauses():
    """uvicorn pauses reading past 64 KiB waiting for the app: a 108 MB upload paused and resumed its socket 1,700
    times. BoundedHeadProtocol reads ahead BODY_BUFFER_BYTES, and no more: memory per connection stays bounded."""
    async def scenario() -> tuple[bool, int]:
        release = asyncio.Event()

        async def app(scope, receive, send):  # reads nothing until released
            if scope["type"] == "http":
                await release.wait()
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})

        config = uvicorn.Config(app, http=BoundedHeadProtocol, lifespan="off", log_level="warning")
        config.load()
        state = ServerState()
        protocols = []

        def factory():
            protocols.append(config.http_protocol_class(config=config, server_state=state, app_state={}))
            return protocols[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        size = 4 * BODY_BUFFER_BYTES
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        writer.write(b"x" * size)
        protocol = None
        for _ in range(500):  # until the server stops reading
            await asyncio.sleep(0.01)
            protocol = protocols[0] if protocols else None
            if protocol is not None and protocol.cycle is not None and protocol.flow.read_paused:
                break
        paused, buffered = protocol.flow.read_paused, len(protocol.cycle.body)
        release.set()
        writer.close()
        server.close()
        return paused, buffered

    paused, buffered = asyncio.run(scenario())
    assert paused and BODY_BUFFER_BYTES < buffered <= BODY_BUFFER_BYTES + 1024 * 1024, buffered


@pytest.mark.parametrize("app_lags", [False, True])
def test_body_chunks_reach_the_app_as_bytes_in_order_whether_it_keeps_up_or_lags(app_lags):
    """BoundedHeadProtocol's own on_body keeps what a lagging app has not read yet in one buffer (up to
    BODY_BUFFER_BYTES); either way the app receives bytes, in order, all of them."""
    pieces = [os.urandom(size) for size in (70_001, 1, 300_000, 4_096, 250_000)]

    async def scenario() -> tuple[list, int]:
        release, received = asyncio.Event(), []

        async def app(scope, receive, send):
            if scope["type"] == "http":
                await release.wait()
                more = True
                while more:
                    message = await receive()
                    received.append(message["body"])
                    more = message.get("more_body", False)
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})

        config = uvicorn.Config(app, http=BoundedHeadProtocol, lifespan="off", log_level="warning")
        config.load()
        protocols = []

        def factory():
            protocols.append(config.http_protocol_class(config=config, server_state=ServerState(), app_state={}))
            return protocols[-1]

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % sum(map(len, pieces)))
        if not app_lags:
            release.set()
        for piece in pieces:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(0.001)  # let the server read it as a chunk of its own
        for _ in range(500):  # a lagging app reads once the whole body waits for it
            await asyncio.sleep(0.01)
            cycle = protocols[0].cycle if protocols else None
            if cycle is not None and (not app_lags or len(cycle.body) == sum(map(len, pieces))):
                break
        waited = len(protocols[0].cycle.body)
        release.set()
        status = await reader.readline()
        writer.close()
        server.close()
        assert status.startswith(b"HTTP/1.1 204"), status
        return received, waited

    received, waited = asyncio.run(scenario())
    assert all(type(body) is bytes for body in received)
    assert b"".join(received) == b"".join(pieces)
    if app_lags:
        assert waited == sum(map(len, pieces)) and len([body for body in received if body]) == 1


def test_a_setting_that_cannot_be_used_stops_the_start_with_one_line_naming_it(tmp_path):
    """A wrong backend name, a Redis URL without its scheme or with a database that is not a number, a malformed
    NN_API_KEYS: `python main.py` (and `python main.py worker`) exits 1 with one line, not a traceback."""
    cases = [({"NN_BACKEND": "Redis"}, "NN_BACKEND='Redis'"),
             ({"NN_BACKEND": "redis", "NN_REDIS_URL": "127.0.0.1:6379/7"}, "NN_REDIS_URL='127.0.0.1:6379/7'"),
             ({"NN_BACKEND": "redis", "NN_REDIS_URL": "redis://127.0.0.1:6379/abc"}, "the database 'abc' is not a number"),
             ({"NN_API_KEYS": "alice:k1:write"}, "entry 1: its scope, after the last colon, is not one of"),
             # accepted, then matched no URL's host and was listed as allowed in every 422
             ({"NN_NOTIFY_ALLOW": "127.0.0.1,http://x.com/"}, "'http://x.com/' is not a host")]
    for overrides, words in cases:
        env = {**os.environ, "NN_PORT": str(free_port()), "NN_DATA_DIR": str(tmp_path), "NN_WORKERS": "0", **overrides}
        for argv in (["main.py"], ["main.py", "worker"]):
            done = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
            lines = done.stderr.strip().splitlines()
            assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], \
                (overrides, argv, done.stderr[-2000:])
