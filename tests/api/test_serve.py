"""`nn-service` (api/serve.py): an installed package starts the service without the checkout's main.py,
from any folder, and finds its own static files."""
import os
import subprocess
import sys
import tomllib

import httpx

from tests.servers import ROOT, free_port, stop_server, wait_until_healthy


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

