"""Resource hygiene over a long run: 200 small jobs through one worker, whose memory stays flat."""

from pathlib import Path

import pytest

from tests.api.conftest import IRIS, X4, Y3, create, running_app, wait_for

JOB = {"inputs": X4, "targets": Y3, "epochs": 3, "batch_size": 2, "learning_rate": 0.01}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def run_jobs(client, n: int) -> None:
    ids = [client.post("/models/iris/training-jobs", json=JOB).json()["job_id"] for _ in range(n)]
    wait_for(lambda: client.get(f"/jobs/{ids[-1]}").json(), lambda j: j["status"] in ("succeeded", "failed"), timeout=120)
    assert {client.get(f"/jobs/{i}").json()["status"] for i in ids[::10]} == {"succeeded"}


@pytest.mark.slow
def test_worker_memory_stays_bounded_over_200_jobs(tmp_path):
    with running_app(tmp_path, poll_interval=0.01) as client:
        create(client, **IRIS)
        (pid,) = [p.pid for p in client.app.state.backend.pool.processes.values()]
        run_jobs(client, 50)  # warm-up: imports, caches, SQLite pages
        after_warm_up = rss_mib(pid)
        run_jobs(client, 150)
        after_all = rss_mib(pid)
        assert [p.pid for p in client.app.state.backend.pool.processes.values()] == [pid]  # the same worker did them all
        print(f"worker RSS after 50 jobs {after_warm_up:.1f} MiB, after 200 jobs {after_all:.1f} MiB")
        assert after_all - after_warm_up < 24, (after_warm_up, after_all)  # generous: a shared CI machine's allocator
