"""Real service processes on loopback, for tests and benchmarks (no pytest in here)."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(data_dir, timeout=30.0, root=ROOT, log=None, port=None, **env_overrides):
    """`python main.py` on a free loopback port (or `port`: a restart where clients wait); returns (url, process)
    once /health answers. NN_WORKERS defaults to 1; keyword arguments are further NN_* environment variables;
    `root` is the checkout to run (benchmarks compare against another one); `log`: a file for its output."""
    port = port or free_port()
    env = {**os.environ, "NN_PORT": str(port), "NN_DATA_DIR": str(data_dir), "NN_WORKERS": "1",
           **{key: str(value) for key, value in env_overrides.items()}}
    process = subprocess.Popen([sys.executable, "main.py"], cwd=root, env=env,
                               stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    return url, wait_until_healthy(url, process, timeout)


def wait_until_healthy(url, process, timeout=30.0):
    """Polls `url`/health until it answers 200; kills `process` and raises if it exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the service did not start within {timeout} s")
        time.sleep(0.1)


def stop_server(process, timeout=15.0):
    """SIGTERM (workers put running jobs back on the queue), then SIGKILL after `timeout`."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
