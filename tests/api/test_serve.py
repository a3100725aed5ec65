"""`nn-service` (api/serve.py): an installed package starts the service without the checkout's main.py,
from any folder, and finds its own static files; SIGTERM stops it even while event streams are open."""
import os
import subprocess
import sys
import threading
import tomllib

import httpx

from tests.servers import ROOT, free_port, start_server, stop_server, wait_until_healthy


def test_pyproject_declares_the_nn_service_command():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["nn-service"] == "api.serve:main"
    assert scripts["nn"] == "client.__main__:main"


NN_SERVICE = [sys.executable, "-c", "import sys; from api.serve import main; sys.exit(main())"]


def start_nn_service(folder):
    """`nn-service` in `folder` (the import path stands for the installed package); (url, process) once it answers."""
    port = free_port()
    env = {**os.environ, "NN_PORT": str(port), "NN_DATA_DIR": str(folder / "data"), "NN_WORKERS": "0",
           "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(NN_SERVICE, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    return url, wait_until_healthy(url, process, timeout=60)


def test_nn_service_runs_from_another_folder_and_serves_its_static_files(tmp_path):
    url, process = start_nn_service(tmp_path)
    try:
        dashboard = httpx.get(f"{url}/dashboard")
        assert dashboard.status_code == 200 and "<html" in dashboard.text.lower()
        favicon = httpx.get(f"{url}/favicon.svg")
        assert favicon.status_code == 200 and "<svg" in favicon.text
        assert httpx.get(f"{url}/docs").status_code == 200
        assert (tmp_path / "data" / "nn.sqlite3").exists()
    finally:
        stop_server(process)



def test_sigterm_ends_open_event_streams_so_the_server_stops(tmp_path):
    """uvicorn waits for every connection to close, and the event stream of a job that is not over stayed open: the
    server (and its workers) kept running after SIGTERM for as long as a client watched the job."""
    url, process = start_server(tmp_path, NN_WORKERS="0")
    try:
        assert httpx.post(f"{url}/models", json={"model_id": "m", "layer_sizes": [2, 2]}).status_code == 201
        job = httpx.post(f"{url}/models/m/training-jobs", json={"min_samples": 100}).json()  # buffering until then
        lines, started = [], threading.Event()

        def watch():
            with httpx.stream("GET", f"{url}/jobs/{job['job_id']}/events", timeout=120) as response:
                for line in response.iter_lines():
                    lines.append(line)
                    started.set()

        watcher = threading.Thread(target=watch)
        watcher.start()
        assert started.wait(60), "the stream sent nothing"
        process.terminate()
        process.wait(timeout=60)  # before: TimeoutExpired, still serving the stream (uvicorn re-raises SIGTERM: -15)
        watcher.join(60)
        assert "event: shutdown" in lines and not watcher.is_alive()
        assert "reconnect" in lines[lines.index("event: shutdown") + 1]
    finally:
        if process.poll() is None:
            process.kill()


def test_help_and_a_mistyped_role_start_nothing(tmp_path):
    """Any argument but `worker` started an API server: `--help` served on port 8000 and created ./data, and a
    worker machine's `python main.py wroker` quietly became an API replica."""
    env = {**os.environ, "NN_PORT": str(free_port()), "PYTHONPATH": str(ROOT)}
    for command in ([sys.executable, str(ROOT / "main.py")], NN_SERVICE):
        shown = subprocess.run([*command, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "{api,worker}" in shown.stdout and "NN_PORT" in shown.stdout, shown
        typo = subprocess.run([*command, "wroker"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
        assert typo.returncode == 2 and "invalid choice: 'wroker' (choose from 'api', 'worker')" in typo.stderr, typo
        assert list(tmp_path.iterdir()) == []  # no data folder, no database
    assert "usage: python main.py" in subprocess.run([sys.executable, str(ROOT / "main.py"), "-h"], cwd=tmp_path, env=env,
                                                     capture_output=True, text=True, timeout=60).stdout
