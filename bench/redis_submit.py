"""A job submit on Redis while another model holds many buffering jobs: read from the model's own index of active
jobs (``jobs:ma:<model>``) against the status sets of every model (the read before that index, still the one used
until the API's start has indexed a store), alternating in one run on one store.

    python bench/redis_submit.py [--jobs 1000] [--rounds 30] [--redis redis://127.0.0.1:6379/14]

Prints the median milliseconds of ``Store.create_job`` (a buffering job of a quiet model) each way, and the ratio.
The key prefix is fresh and deleted afterwards.
"""

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.storage.base import JobRecord  # noqa: E402
from api.storage.redis_store import RedisStore  # noqa: E402


def buffering(model_id: str) -> JobRecord:
    return JobRecord(job_id=uuid.uuid4().hex, model_id=model_id, model_uid="", status="buffering", params={"epochs": 1},
                     min_samples=10, consume_buffer=True, created_at=time.time())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="buffering jobs of the crowded model")
    parser.add_argument("--rounds", type=int, default=30, help="submits timed each way")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    store = RedisStore(args.redis, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    flag = store._key("jobs", "ma-indexed")
    try:
        store.index_existing_jobs()
        for model_id in ("crowded", "quiet"):
            store.create_model(model_id, b"blob", {})
        for _ in range(args.jobs):
            store.create_job(buffering("crowded"))
        times = {"every model's status sets": [], "the model's own index": []}
        for _ in range(args.rounds):
            for way in times:
                if way.startswith("every"):
                    store.redis.delete(flag)
                else:
                    store.redis.set(flag, "1")
                started = time.perf_counter()
                store.create_job(buffering("quiet"))
                times[way].append(time.perf_counter() - started)
        medians = {way: 1000 * statistics.median(t) for way, t in times.items()}
        print(f"| submit with {args.jobs} buffering jobs on another model | median ms |")
        print("|---|---|")
        for way, ms in medians.items():
            print(f"| {way} | {ms:.2f} |")
        old, new = medians.values()
        print(f"\nthe model's own index: {old / new:.1f}x faster")
    finally:
        store.reset()


if __name__ == "__main__":
    main()
