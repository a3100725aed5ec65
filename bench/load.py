"""Load bench: N concurrent clients against a real `python main.py` (uvicorn) on loopback.

Two phases of the same length and the same client mix (outputs, polls, appends):
  idle  - nothing trains;
  busy  - the clients also submit training jobs, and the workers train throughout.
Prints requests/s, p50/p99 latency per route and the error count (must be 0) for each phase, then
the ratio of POST /output latency busy / idle (target: at most 1.5).

    python bench/load.py                      # 32 clients, 10 s per phase, 1 worker
    python bench/load.py --clients 64 --seconds 30 --workers 2 --json bench/out/load.json
"""

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.servers import start_server, stop_server  # noqa: E402

N_IN, N_OUT = 16, 4
SERVE_MODELS = [f"serve-{i}" for i in range(4)]
TRAIN_MODELS = [f"train-{i}" for i in range(4)]


def rows(rng: random.Random, n: int) -> tuple[list[list[float]], list[int]]:
    return [[rng.uniform(-1, 1) for _ in range(N_IN)] for _ in range(n)], [rng.randrange(N_OUT) for _ in range(n)]


class Stats:
    def __init__(self):
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.examples: list[str] = []

    def record(self, route: str, seconds: float, ok: bool, what: str = "") -> None:
        self.latency[route].append(seconds)
        if not ok:
            self.errors[route] += 1
            if len(self.examples) < 5:
                self.examples.append(f"{route}: {what}")


async def client_loop(http: httpx.AsyncClient, rng: random.Random, stats: Stats, deadline: float, busy: bool,
                      job_ids: list[str]) -> None:
    weights = {"output": 50, "poll": 25, "append": 20, "submit": 5 if busy else 0}
    names, cumulative = list(weights), list(weights.values())
    while time.monotonic() < deadline:
        op = rng.choices(names, cumulative)[0]
        started = time.perf_counter()
        try:
            if op == "output":
                route = "POST /models/{id}/output"
                response = await http.post(f"/models/{rng.choice(SERVE_MODELS)}/output", json={"inputs": rows(rng, 8)[0]})
            elif op == "poll":
                if job_ids and rng.random() < 0.5:
                    route = "GET /jobs/{id}"
                    response = await http.get(f"/jobs/{rng.choice(job_ids)}")
                else:
                    route = "GET /models/{id}"
                    response = await http.get(f"/models/{rng.choice(SERVE_MODELS + TRAIN_MODELS)}")
            elif op == "append":
                route = "POST /models/{id}/samples"
                x, y = rows(rng, 16)
                response = await http.post(f"/models/{rng.choice(TRAIN_MODELS)}/samples", json={"inputs": x, "targets": y})
            else:
                route = "POST /models/{id}/training-jobs"
                x, y = rows(rng, 64)
                response = await http.post(f"/models/{rng.choice(TRAIN_MODELS)}/training-jobs",
                                           json={"inputs": x, "targets": y, "epochs": 20, "batch_size": 16,
                                                 "consume_buffer": True})
                if response.status_code == 202:
                    job_ids.append(response.json()["job_id"])
            ok = response.status_code < 400
            what = f"{response.status_code} {response.text[:120]}"
        except httpx.HTTPError as exc:
            ok, what = False, repr(exc)
        stats.record(route, time.perf_counter() - started, ok, what)


async def phase(url: str, clients: int, seconds: float, busy: bool, job_ids: list[str], seed: int) -> tuple[Stats, float]:
    stats = Stats()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(client_loop(http, random.Random(seed * 1000 + i), stats, deadline, busy, job_ids)
                               for i in range(clients)))
        return stats, time.monotonic() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, stats: Stats, elapsed: float) -> dict:
    total = sum(len(v) for v in stats.latency.values())
    table = {"phase": name, "seconds": round(elapsed, 2), "requests": total, "requests_per_s": round(total / elapsed, 1),
             "errors": sum(stats.errors.values()), "routes": {}}
    print(f"\n{name}: {total} requests in {elapsed:.1f} s = {total / elapsed:.0f} req/s, "
          f"errors: {table['errors']}")
    print(f"  {'route':34} {'count':>7} {'req/s':>7} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for route in sorted(stats.latency):
        values = stats.latency[route]
        row = {"count": len(values), "requests_per_s": round(len(values) / elapsed, 1),
               "p50_ms": round(1000 * statistics.median(values), 2), "p99_ms": round(1000 * percentile(values, 0.99), 2),
               "errors": stats.errors[route]}
        table["routes"][route] = row
        print(f"  {route:34} {row['count']:7d} {row['requests_per_s']:7.1f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
              f"{row['errors']:7d}")
    for example in stats.examples:
        print("  error:", example)
    return table


async def main_async(args) -> dict:
    data_dir = tempfile.mkdtemp(prefix="nn-load-")
    url, process = start_server(data_dir, timeout=60, NN_WORKERS=args.workers, NN_LOG_LEVEL="warning")
    try:
        rng = random.Random(args.seed)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for model_id in SERVE_MODELS + TRAIN_MODELS:
                response = await http.post("/models", json={"model_id": model_id, "layer_sizes": [N_IN, 64, 64, N_OUT],
                                                            "activations": ["relu", "relu", "softmax"], "seed": 0})
                assert response.status_code == 201, response.text
            x, y = rows(rng, 64)
            for model_id in TRAIN_MODELS:  # something to train as soon as the busy phase starts
                await http.post(f"/models/{model_id}/samples", json={"inputs": x, "targets": y})

        job_ids: list[str] = []
        idle, idle_s = await phase(url, args.clients, args.seconds, False, job_ids, args.seed)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            for model_id in TRAIN_MODELS:
                response = await http.post(f"/models/{model_id}/training-jobs", json={"epochs": 200, "batch_size": 16})
                job_ids.append(response.json()["job_id"])
            # the busy phase starts once the workers train
            deadline = time.monotonic() + 30
            while (await http.get(f"/jobs/{job_ids[0]}")).json()["status"] != "running" and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        busy, busy_s = await phase(url, args.clients, args.seconds, True, job_ids, args.seed + 1)
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            final = [(await http.get(f"/jobs/{job_id}")).json() for job_id in job_ids]
    finally:
        stop_server(process, timeout=30)

    result = {"clients": args.clients, "workers": args.workers, "cpus": os.cpu_count(),
              "idle": summary("idle (nothing trains)", idle, idle_s),
              "busy": summary("busy (jobs train throughout)", busy, busy_s)}
    route = "POST /models/{id}/output"
    result["jobs"] = {"submitted": len(job_ids), "started": sum(j["status"] != "queued" for j in final),
                      "epochs_trained": sum(j["epochs_completed"] for j in final)}
    result["output_p50_ratio"] = round(result["busy"]["routes"][route]["p50_ms"] / result["idle"]["routes"][route]["p50_ms"], 3)
    result["output_p99_ratio"] = round(result["busy"]["routes"][route]["p99_ms"] / result["idle"]["routes"][route]["p99_ms"], 3)
    print(f"\njobs submitted: {len(job_ids)}, started by the end: {result['jobs']['started']}, "
          f"epochs trained: {result['jobs']['epochs_trained']}")
    print(f"POST /output latency busy/idle: p50 x{result['output_p50_ratio']}, p99 x{result['output_p99_ratio']} "
          f"(target: at most 1.5)")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each phase")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    errors = result["idle"]["errors"] + result["busy"]["errors"]
    sys.exit(1 if errors or result["output_p50_ratio"] > 1.5 else 0)


if __name__ == "__main__":
    main()
