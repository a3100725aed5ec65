"""Fixtures shared by tests that talk to a real server process."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir, **env_overrides):
    """`python main.py` on a free loopback port; returns (url, process) once /health answers."""
    port = free_port()
    env = {**os.environ, "NN_PORT": str(port), "NN_DATA_DIR": str(data_dir), "NN_WORKERS": "1",
           **{key: str(value) for key, value in env_overrides.items()}}
    process = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return url, process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("the service did not start within 30 s")
        time.sleep(0.1)


def stop_server(process):
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server with its own data dir for the module's tests; yields its base URL."""
    url, process = start_server(tmp_path_factory.mktemp("data"))
    yield url
    stop_server(process)
