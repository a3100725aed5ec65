"""The dataset folder's crash safety: a real server SIGKILLed in the middle of an upload leaves no
dataset, half or whole, and what it left in .tmp is swept once stale."""

import io
import os
import socket
import time
from pathlib import Path

import httpx
import numpy as np

from api.datasets import STALE_SECONDS, DatasetStore
from tests.api.conftest import wait_for
from tests.servers import start_server, stop_server


def _npz(rows: int) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.ones((rows, 100), np.float32), targets=np.zeros(rows, np.int64))
    return buffer.getvalue()


def _received(tmp: Path) -> int:
    """Bytes of uploads being received now."""
    return sum(f.stat().st_size for f in tmp.glob("*/upload")) if tmp.exists() else 0


def test_sigkill_mid_upload_leaves_no_dataset(tmp_path):
    data = _npz(20_000)  # 8 MB
    url, process = start_server(tmp_path, NN_WORKERS=0)
    try:
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(b"POST /datasets HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npz\r\n"
                         + f"Content-Length: {len(data)}\r\n\r\n".encode() + data[:len(data) // 2])
            wait_for(lambda: _received(tmp_path / "datasets" / ".tmp"), lambda n: n > 1_000_000, timeout=30)
            process.kill()
            process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    assert list((tmp_path / "datasets" / ".tmp").iterdir())  # the upload was under way
    url, process = start_server(tmp_path, NN_WORKERS=0)
    try:
        assert httpx.get(f"{url}/datasets").json() == {"data": [], "count": 0, "next_offset": None}
        response = httpx.post(f"{url}/datasets", content=data, headers={"content-type": "application/x-npz"}, timeout=60)
        assert response.status_code == 201, response.text
        assert httpx.get(f"{url}/datasets").json()["count"] == 1
    finally:
        stop_server(process)


def test_stale_leftovers_are_swept_and_never_listed(tmp_path):
    store = DatasetStore(tmp_path)
    folder = store.new_upload()
    (folder / "data.npz").write_bytes(_npz(3))
    (folder / "meta.json").write_text("{}")  # converted, never renamed into place: not a dataset
    assert store.page(0, 10) == ([], 0)
    old = time.time() - STALE_SECONDS - 10
    os.utime(folder, (old, old))
    DatasetStore(tmp_path)
    assert not folder.exists()


def test_an_unwritable_dataset_folder_answers_503_and_the_service_still_runs(tmp_path):
    from tests.api.conftest import running_app

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the dataset folder should be")
    with running_app(tmp_path / "data", workers=0, dataset_dir=blocker / "datasets") as client:
        assert client.get("/health").json()["status"] == "ok"
        assert client.get("/datasets").json() == {"data": [], "count": 0, "next_offset": None}
        response = client.post("/datasets", json={"inputs": [[1.0]], "targets": [0]})
        assert response.status_code == 503 and "NN_DATASET_DIR" in response.json()["detail"]
        assert client.delete("/datasets/x").status_code == 404


def test_a_client_that_hangs_up_mid_body_is_a_499_without_a_traceback(tmp_path):
    """Half of the declared body, then the connection closed: counted as a 500 with two ERROR tracebacks (70 lines
    each) on every route that reads a body; it is the client's doing, so 499 and one INFO line."""
    from tests.api.conftest import IRIS

    log = open(tmp_path / "server.log", "wb")
    url, process = start_server(tmp_path / "data", log=log, NN_WORKERS=0)
    try:
        assert httpx.post(f"{url}/models", json=IRIS).status_code == 201
        port = int(url.rsplit(":", 1)[1])
        bodies = [("/datasets", "application/x-npz", _npz(2000)), ("/models/iris/samples", "text/csv", b"a,b,c,d,t\n1,2,3,4,0\n" * 999),
                  ("/models/iris/samples", "application/json", b'{"inputs": [' + b"[1, 2, 3, 4], " * 999),
                  ("/models", "application/json", b'{"model_id": "m", "layer_sizes": [4, 3], "activations": ["softmax"]} ' * 99),
                  ("/v2/models/iris/infer", "application/json", b'{"inputs": [{"name": "input", "shape": [1, 4]' + b" " * 9999)]
        for path, media, body in bodies:
            with socket.create_connection(("127.0.0.1", port)) as sock:
                sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {media}\r\nContent-Length: {len(body)}\r\n"
                             f"\r\n".encode() + body[:len(body) // 2])
                time.sleep(0.2)  # the server reads what came, then waits for the rest
        counted = wait_for(lambda: "".join(line for line in httpx.get(f"{url}/metrics").text.splitlines(True)
                                           if line.startswith("nn_http_requests_total")),
                           lambda text: text.count('status="499"') == 4 or 'status="500"' in text, timeout=30)
        for route in ("/datasets", "/models/{model_id}/samples", "/models", "/v2/models/{model_id}/infer"):
            assert f'route="{route}",status="499"' in counted, route
        assert 'status="500"' not in counted and 'route="/models/{model_id}/samples",status="499"} 2.0' in counted
        assert not list((tmp_path / "data" / "datasets" / ".tmp").iterdir())  # the uploads were removed
    finally:
        stop_server(process)
        log.close()
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text and "ERROR" not in text, text
    assert text.count("the client closed the connection before its body was read") == 5
