"""How much faster does a 16-trial search run with 2 workers than with 1?

    python bench/search.py [--workers 1 2] [--repeat 1] [--backend sqlite|redis] [--redis redis://127.0.0.1:6379/14]

The search: scikit-learn digits (1797 samples, 64 inputs, 10 classes), a 4 x 4 grid of hidden layers and
learning rates, 3-fold cross-validation, 30 epochs, batch 32, metric accuracy. For each worker count it
starts that many workers (sqlite: the embedded worker processes on a temporary data dir; redis:
`python main.py worker` RQ workers on a fresh key prefix), submits the search through the service layer
and times it from its first trial's start to its last trial's end (store timestamps, so worker start-up
is not counted). Each worker is held to one BLAS thread. Worker counts are interleaved when repeated;
the table shows the best run of each, the speed-up against the first count and the best trial (which must
not depend on the number of workers). Prints a markdown table and writes bench/out/search.json.
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"  # before NumPy loads; the workers inherit it

import numpy as np  # noqa: E402

from api.schemas import ModelCreate  # noqa: E402
from api.search_schemas import SearchCreate  # noqa: E402
from api.search import submit_search  # noqa: E402
from api.services import Service  # noqa: E402
from api.settings import Settings  # noqa: E402
from api.backend import open_backend  # noqa: E402
from api.worker import worker_main  # noqa: E402

SPACE = {"hidden_sizes": [[64], [128], [64, 64], [128, 64]], "learning_rate": [0.001, 0.003, 0.01, 0.03]}


def start_workers(n: int, settings: Settings) -> list:
    if settings.backend == "redis":
        env = {**os.environ, "NN_BACKEND": "redis", "NN_REDIS_URL": settings.redis_url,
               "NN_REDIS_PREFIX": settings.redis_prefix, "NN_REDIS_QUEUE": settings.redis_queue, "NN_LOG_LEVEL": "warning"}
        return [subprocess.Popen([sys.executable, "main.py", "worker"], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(n)]
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=worker_main, args=(settings.model_dump(mode="json"), f"bench-{i}"), daemon=True)
                 for i in range(n)]
    for p in processes:
        p.start()
    return processes


def stop_workers(workers: list) -> None:
    for w in workers:
        w.terminate()
    for w in workers:
        w.wait(30) if isinstance(w, subprocess.Popen) else w.join(30)


def run(n_workers: int, args, x, y) -> dict:
    tag = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(backend=args.backend, data_dir=Path(tmp), redis_url=args.redis, redis_prefix=f"bench-search-{tag}",
                            redis_queue=f"bench-search-{tag}", poll_interval=0.05, progress_interval=1.0, log_level="warning")
        service = Service(open_backend(settings).store, settings)
        service.create_model(ModelCreate(model_id="digits", layer_sizes=[64, 32, 10], activations=["relu", "softmax"], seed=0))
        workers = start_workers(n_workers, settings)
        try:
            if args.backend == "redis":  # the RQ workers must be listening before the trials are enqueued
                from rq import Queue, Worker

                queue = Queue(settings.redis_queue, connection=service.store.redis)
                deadline = time.monotonic() + 60
                while Worker.count(connection=service.store.redis, queue=queue) < n_workers:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the RQ workers did not start")
                    time.sleep(0.1)
            request = SearchCreate(inputs=x, targets=y, space=SPACE, folds=3, metric="accuracy", seed=0, epochs=30,
                                   batch_size=32)
            submitted = time.monotonic()
            job = submit_search(service, "digits", request)
            deadline = time.monotonic() + 1800
            while (job := service.get_job(job.job_id)).status not in ("succeeded", "failed", "cancelled"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the search did not finish")
                time.sleep(0.25)  # the times come from the store, so polling slowly costs nothing
            total = time.monotonic() - submitted
            if job.status != "succeeded":
                raise RuntimeError(f"search {job.status}: {job.error}")
            trials = job.trials
            best = job.progress["best"]
            return {"workers": n_workers, "seconds": job.finished_at - job.started_at, "seconds_from_submit": total,
                    "trials": len(trials), "trial_seconds_mean": sum(t["finished_at"] - t["started_at"] for t in trials) / len(trials),
                    "workers_used": len({t["worker_id"] for t in trials}), "best_index": best["index"],
                    "best_accuracy": best["score"], "ranking": [t["index"] for t in sorted(trials, key=lambda t: -t["score"])]}
        finally:
            stop_workers(workers)
            if args.backend == "redis":
                service.store.reset()
                service.store.redis.delete(*service.store.redis.keys(f"rq:*{settings.redis_queue}*") or ["-"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=2, help="interleaved runs per worker count; the table shows the best")
    parser.add_argument("--backend", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    parser.add_argument("--digits", type=Path, help="an .npz with x and y (for machines without scikit-learn)")
    args = parser.parse_args()
    if args.digits:
        data = np.load(args.digits)
        x, y = data["x"].tolist(), data["y"].tolist()
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y = (digits.data / 16.0).round(4).tolist(), digits.target.tolist()
    runs: dict[int, list[dict]] = {n: [] for n in args.workers}
    for _ in range(args.repeat):
        for n in args.workers:
            runs[n].append(run(n, args, x, y))
            print(f"# {n} worker(s): {runs[n][-1]['seconds']:.1f} s", file=sys.stderr, flush=True)
    best = {n: min(r, key=lambda r: r["seconds"]) for n, r in runs.items()}
    base = best[args.workers[0]]["seconds"]
    load = os.getloadavg()
    print(f"\n16-trial search (digits, 3-fold CV, 30 epochs), backend {args.backend}, {os.cpu_count()} CPUs, "
          f"load average {load[0]:.1f} after the runs\n")
    print("| workers | wall time (s) | speed-up | mean trial (s) | workers used | best trial | best accuracy |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.workers:
        r = best[n]
        print(f"| {n} | {r['seconds']:.1f} | {base / r['seconds']:.2f}x | {r['trial_seconds_mean']:.2f} | {r['workers_used']} "
              f"| {r['best_index']} | {r['best_accuracy']:.4f} |")
    same = len({tuple(r["ranking"]) for rs in runs.values() for r in rs}) == 1
    print(f"\nsame ranking in every run: {same}")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / f"search_{args.backend}.json").write_text(json.dumps({"runs": runs, "load_average": load, "same_ranking": same}, indent=1))


if __name__ == "__main__":
    main()
