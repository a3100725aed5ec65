"""What do GET /jobs's filters cost with many jobs, on SQLite and on Redis (with its indexes vs. a scan)?

    python bench/jobs_list.py [--jobs 5000] [--models 50] [--repeat 20] [--redis redis://127.0.0.1:6379/14]

Stores N jobs over M models through the store (a quarter of them cancelled, the rest waiting in
buffering, one in ten a search job), then times ``Store.list_all_jobs`` (a page of 50) for each filter:
the median of ``--repeat`` calls, in milliseconds. For Redis it also times what the list would cost
without indexes (SCAN every job hash and read its fields, as a store without them must), and prints the
ratio in the same run. The Redis half uses a fresh key prefix, deleted afterwards; it is skipped when no
Redis answers. Prints a markdown table.
"""

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.storage.base import JobRecord, new_trial  # noqa: E402

FILTERS = [("none", {}), ("status=cancelled", {"status": "cancelled"}), ("status=buffering", {"status": "buffering"}),
           ("model_id=m7", {"model_id": "m7"}), ("kind=search", {"kind": "search"}),
           ("status=cancelled&model_id=m7&kind=training", {"status": "cancelled", "model_id": "m7", "kind": "training"}),
           ("last page, no filter", {"offset": -50})]


def fill(store, n_jobs: int, n_models: int) -> None:
    for m in range(n_models):
        store.create_model(f"m{m}", b"not a network: the list never reads it", {"n": m})
    for i in range(n_jobs):
        job = JobRecord(job_id=uuid.uuid4().hex, model_id=f"m{i % n_models}", model_uid="", status="buffering",
                        params={"epochs": 1}, min_samples=10**6, consume_buffer=True, created_at=time.time())
        if i % 10 == 9:
            job.kind, job.stage = "search", "trials"
            made = store.create_search_job(job, [new_trial(0, {}, 0)])
        else:
            made = store.create_job(job)
        if i % 4 == 0:
            store.cancel_job(made.job_id)


def median_ms(call, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def scan_all(store) -> int:
    """A store without indexes: every job hash read (status, model, kind, seq), then sorted and filtered."""
    rows = []
    for raw in store.redis.scan_iter(match=store._key("j", "*"), count=1000):
        rows.append(raw)
    pipe = store.redis.pipeline(transaction=False)
    for raw in rows:
        pipe.hmget(raw, ["seq", "status", "model_id", "kind"])
    found = [f for f in pipe.execute() if f[0] is not None and f[1] == b"cancelled"]
    return len(sorted(found, key=lambda f: -int(f[0]))[:50])


def run(name: str, store, args) -> list[str]:
    fill(store, args.jobs, args.models)
    total = store.list_all_jobs(0, 1)[1]
    lines = []
    for label, query in FILTERS:
        query = dict(query)
        offset = query.pop("offset", 0)
        if offset < 0:
            offset = total + offset
        ms = median_ms(lambda: store.list_all_jobs(offset, 50, **query), args.repeat)
        lines.append(f"| {name} | {label} | {ms:.2f} |")
    if name == "redis":
        indexed = median_ms(lambda: store.list_all_jobs(0, 50, status="cancelled"), args.repeat)
        scanned = median_ms(lambda: scan_all(store), max(3, args.repeat // 4))
        lines.append(f"| redis | status=cancelled by a scan of every job (no index) | {scanned:.2f} "
                     f"({scanned / indexed:.0f}x the indexed list) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--models", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = parser.parse_args()
    lines = ["| backend | GET /jobs filter (page of 50) | median ms |", "|---|---|---|"]
    from api.storage.sqlite import SQLiteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "nn.sqlite3")
        lines += run("sqlite", store, args)
        store.close()
    try:
        import redis

        redis.Redis.from_url(args.redis, socket_connect_timeout=0.5).ping()
    except Exception as exc:
        print(f"(redis skipped: {exc})", file=sys.stderr)
    else:
        from api.storage.redis_store import RedisStore

        store = RedisStore(args.redis, prefix=f"bench-{uuid.uuid4().hex[:8]}")
        try:
            lines += run("redis", store, args)
        finally:
            store.reset()
            store.close()
    print(f"{args.jobs} jobs over {args.models} models\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
