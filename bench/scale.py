"""Does training throughput grow with the number of RQ workers? (NN_BACKEND=redis)

    python bench/scale.py [--workers 1 2] [--small-jobs 40] [--repeat 3] [--redis redis://127.0.0.1:6379/14]

For each worker count it starts that many `python main.py worker` processes on a fresh key prefix,
submits jobs through the service layer (as an API replica would) and waits for them:

- many small jobs: one per model (a model trains one job at a time), jobs/minute from the first job's
  start to the last one's end (store timestamps, so worker start-up and submission are not counted);
- large jobs: samples/s (samples x epochs / wall time) of one large job alone, and of as many large
  jobs as there are workers at once. One job runs on one worker (the core has no data parallelism),
  so a single job's samples/s stays flat; the aggregate grows with the workers.

Each worker is held to one BLAS thread, so the comparison is about workers. Prints a markdown table. Uses its own prefix in the given database and deletes its keys at the end.
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.schemas import JobCreate, ModelCreate  # noqa: E402
from api.services import Service  # noqa: E402
from api.settings import Settings  # noqa: E402
from api.backend import open_backend  # noqa: E402


def start_workers(n: int, env: dict) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "main.py", "worker"], cwd=ROOT, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]


def wait_jobs(service: Service, job_ids: list[str], timeout: float = 600) -> float:
    """Waits for the jobs; returns the seconds from the first start to the last finish (the workers' wall time)."""
    deadline = time.monotonic() + timeout
    pending = set(job_ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} jobs unfinished")
        for job_id in list(pending):
            status = service.get_job(job_id).status
            if status in ("failed", "cancelled"):
                raise RuntimeError(f"job {job_id} {status}: {service.get_job(job_id).error}")
            if status == "succeeded":
                pending.discard(job_id)
        time.sleep(0.25)  # the times come from the store, so polling slowly costs nothing
    jobs = [service.get_job(j) for j in job_ids]
    return max(j.finished_at for j in jobs) - min(j.started_at for j in jobs)


def submit_all(service: Service, specs: list[tuple]) -> list[str]:
    """Stores every job first and then puts them all on the RQ queue at once, so the workers never wait
    for the submitter (the clock starts at the first start)."""
    enqueue, service.store.enqueue = service.store.enqueue, None
    try:
        jobs = [submit(service, *spec) for spec in specs]
    finally:
        service.store.enqueue = enqueue
    with service.store.redis.pipeline() as pipe:  # RQ's queue takes them all in one MULTI/EXEC
        enqueue(pipe, jobs)
        pipe.execute()
    return jobs


def submit(service: Service, model_id: str, sizes: list[int], n: int, epochs: int, batch: int) -> str:
    service.create_model(ModelCreate(model_id=model_id, layer_sizes=sizes, activations=["relu"] * (len(sizes) - 2) + ["linear"],
                                     seed=0))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, sizes[0])).round(3)
    y = x[:, :1] * 0.5
    return service.submit_job(model_id, JobCreate(inputs=x.tolist(), targets=y.tolist(), epochs=epochs,
                                                  batch_size=batch, seed=1)).job_id


def run(n_workers: int, args) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "NN_BACKEND": "redis", "NN_REDIS_URL": args.redis, "NN_REDIS_PREFIX": prefix,
           "NN_REDIS_QUEUE": f"{prefix}-training", "NN_LOG_LEVEL": "warning", "NN_MAX_SAMPLES_PER_REQUEST": "100000",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one core per worker
    settings = Settings(backend="redis", redis_url=args.redis, redis_prefix=prefix, redis_queue=f"{prefix}-training",
                        max_samples_per_request=100_000, redis_timeout=10)
    service = Service(open_backend(settings).store, settings)
    workers = start_workers(n_workers, env)
    try:
        from api.rq_runner import queue_stats

        deadline = time.monotonic() + 60
        while queue_stats(service.store, settings)["workers_alive"] < n_workers:
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.1)
        result = {"workers": n_workers}

        jobs = submit_all(service, [(f"small-{i}", [8, 32, 1], 1000, 5, 32) for i in range(args.small_jobs)])
        result["jobs_per_minute"] = args.small_jobs / wait_jobs(service, jobs) * 60

        n, epochs = args.large_samples, args.large_epochs
        for count, key in ((1, "one_large"), (n_workers, "all_large")):
            jobs = submit_all(service, [(f"{key}-{i}", [32, 128, 128, 1], n, epochs, 64) for i in range(count)])
            result[key] = count * n * epochs / wait_jobs(service, jobs)
        return result
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(30)
        service.store.reset()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--small-jobs", type=int, default=40)
    parser.add_argument("--large-samples", type=int, default=20_000)
    parser.add_argument("--large-epochs", type=int, default=3)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--repeat", type=int, default=3, help="runs per worker count; the table shows the best")
    args = parser.parse_args()
    runs = [[run(n, args) for n in args.workers] for _ in range(args.repeat)]  # interleaved: 1, 2, 1, 2, ...
    rows = [{k: max(r[i][k] for r in runs) for k in runs[0][i]} for i in range(len(args.workers))]  # best of each
    base = rows[0]
    print(f"\n{os.cpu_count()} CPU cores, best of {args.repeat} runs; {args.small_jobs} small jobs ([8, 32, 1], 1000 samples, 5 epochs, batch 32); large jobs "
          f"([32, 128, 128, 1], {args.large_samples} samples, {args.large_epochs} epochs, batch 64)\n")
    print("| workers | small jobs / minute | one large job, samples/s | one large job per worker, total samples/s |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['workers']} | {r['jobs_per_minute']:.0f} ({r['jobs_per_minute'] / base['jobs_per_minute']:.2f}x) "
              f"| {r['one_large']:.0f} ({r['one_large'] / base['one_large']:.2f}x) "
              f"| {r['all_large']:.0f} ({r['all_large'] / base['all_large']:.2f}x) |")


if __name__ == "__main__":
    main()
