"""Hostile bench: replays the attack classes of issue 10 against a real `python main.py` on loopback and
prints, per class, the refusal time, the server's peak RSS growth and the worst /health latency during
the attack, next to the goals. Then JSON throughput (issue 12): 2,000x784 appends and a 1024-row
/output, against this checkout and, with --baseline, an older one, as a ratio from the same run.

Classes:
  1   10,000 requests with made-up HTTP methods: /metrics size and RSS stay flat.
  2   a 30 MiB body {"inputs": [[0],[0],...]} (7.9M rows): on a model, on a missing model, three at once.
  3   crafted model imports: a zip-bomb .npz, a 1 KB file declaring a 20000x20000 layer, one declaring
      5000 layers (refused in under 1 s, under 100 MiB).
  10  200 event streams at once: past NN_MAX_STREAMS they get 503; /health stays quick.
  json  JSON append and /output throughput, this checkout vs --baseline.
  long  a long job (4-8-3 model, 6 inline rows, batch 6, 3,000 epochs) on SQLite and on Redis (+ one
        `python main.py worker`): its duration_seconds against its training time (the sum of its epochs' times),
        this checkout vs --baseline. A job that rewrote its whole history every epoch took 30-50x its training.

    python bench/hostile.py                                   # every class; json needs --baseline
    git worktree add /tmp/base-x 9b2c819
    python bench/hostile.py --baseline /tmp/base-x            # ... and JSON before/after in one run
    python bench/hostile.py --classes 2,json --baseline /tmp/base-x
    python bench/hostile.py --classes long --baseline /tmp/base-x --epochs 3000   # Redis: NN_BENCH_REDIS_URL
"""

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from api.schemas import OutputRequest, SamplesCreate  # noqa: E402
from neural_net import Network  # noqa: E402
from tests.servers import start_server, stop_server  # noqa: E402

MiB = 1024 * 1024
JSON = {"Content-Type": "application/json"}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Watch:
    """While open: samples the server's RSS every 5 ms and times GET /health every 20 ms."""

    def __init__(self, url: str, pid: int):
        self.url, self.pid = url, pid
        self.base = self.peak = rss_mib(pid)
        self.health: list[float] = []
        self._stop = threading.Event()

    def _rss(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(0.005)

    def _probe(self):
        with httpx.Client(timeout=60) as http:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    http.get(f"{self.url}/health")
                except httpx.HTTPError:
                    pass
                self.health.append(time.perf_counter() - started)
                time.sleep(0.02)

    def __enter__(self):
        self.threads = [threading.Thread(target=self._rss, daemon=True), threading.Thread(target=self._probe, daemon=True)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self.threads:
            thread.join()

    @property
    def growth(self) -> float:
        return self.peak - self.base

    @property
    def worst_health_ms(self) -> float:
        return 1000 * max(self.health, default=0.0)

    @property
    def p99_health_ms(self) -> float:
        return 1000 * float(np.percentile(self.health, 99)) if self.health else 0.0


@contextlib.contextmanager
def server(root: Path = ROOT, **env):
    with tempfile.TemporaryDirectory(prefix="nn-hostile-") as data:
        url, process = start_server(data, root=root, **{"NN_WORKERS": 0, **env})
        try:
            yield url, process.pid
        finally:
            stop_server(process, timeout=5)


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(name: str, seconds: float, watch: Watch, statuses, goal_s: float = 1.0, goal_mib: float = 100,
           goal_health_ms: float = 100) -> bool:
    ok = seconds < goal_s and watch.growth < goal_mib and watch.worst_health_ms < goal_health_ms
    print(f"  {name:<44} {statuses!s:<14} refused in {seconds:6.2f} s (goal < {goal_s:g})  "
          f"RSS +{watch.growth:6.1f} MiB (goal < {goal_mib:g})  /health worst {watch.worst_health_ms:7.1f} ms "
          f"(goal < {goal_health_ms:g})  {verdict(ok)}")
    return ok


# -- class 1: made-up methods ----------------------------------------------------------
def class_1(n: int) -> bool:
    print(f"class 1: {n} requests with made-up methods (NN_API_KEYS set, no key sent)")
    with server(NN_API_KEYS="bench-key") as (url, pid):
        auth = {"Authorization": "Bearer bench-key"}
        with httpx.Client(timeout=30) as http:
            for i in range(200):  # warm-up: imports, the label sets a made-up method can use
                http.request(f"W{i:07d}", f"{url}/models")
            http.get(f"{url}/metrics", headers=auth)
            size_before, rss_before = len(http.get(f"{url}/metrics", headers=auth).content), rss_mib(pid)
            started = time.perf_counter()
            for i in range(n):
                http.request(f"M{i:07d}", f"{url}/models")
            seconds = time.perf_counter() - started
            size_after, rss_after = len(http.get(f"{url}/metrics", headers=auth).content), rss_mib(pid)
    ok = size_after - size_before < 100 and rss_after - rss_before < 5
    print(f"  /metrics {size_before} -> {size_after} bytes, RSS {rss_before:.1f} -> {rss_after:.1f} MiB "
          f"({n / seconds:.0f} requests/s); goal: flat (< 100 bytes, < 5 MiB)  {verdict(ok)}")
    return ok


# -- class 2: a large JSON body -----------------------------------------------------------
def rows_body(size: int) -> bytes:
    n = (size - 16) // 4
    return b'{"inputs": [' + b"[0]," * (n - 1) + b"[0]]}"


def post_all(url: str, paths: list[str], body: bytes) -> tuple[float, list[int]]:
    """POSTs the body to every path at once; (seconds until the last answer, statuses)."""
    statuses: list[int] = []

    def one(path):
        with httpx.Client(timeout=120) as http:
            statuses.append(http.post(f"{url}{path}", content=body, headers=JSON).status_code)

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sorted(statuses)


def class_2(root: Path = ROOT) -> bool:
    body = rows_body(30 * MiB)
    print(f"class 2: a {len(body) / MiB:.0f} MiB body of {body.count(b'[') - 1:,} one-value rows")
    ok = True
    with server(root) as (url, pid):
        assert httpx.post(f"{url}/models", json={"model_id": "m", "layer_sizes": [1, 2]}).status_code == 201
        for name, paths in [("on a model", ["/models/m/output"]), ("on a model that does not exist", ["/models/nowhere/output"]),
                            ("three at once", ["/models/m/output", "/models/m/samples", "/models/nowhere/output"])]:
            time.sleep(0.5)
            with Watch(url, pid) as watch:
                seconds, statuses = post_all(url, paths, body)
            ok &= report(name, seconds, watch, statuses)
    return ok


# -- class 3: crafted model files -------------------------------------------------------------
def npz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, array, allow_pickle=False)
    return out.getvalue()


def header_of(config: dict) -> bytes:
    net = Network.from_layer_sizes([4, 3], activations=["softmax"], seed=0)
    archive = np.load(io.BytesIO(net.to_bytes()))
    header = json.loads(archive["header"].tobytes())
    header["config"] = config
    return npy(np.frombuffer(json.dumps(header).encode(), np.uint8))


def zip_bomb(gib: float = 2.0) -> bytes:
    """A valid 4-3 model whose `params` member declares and inflates to `gib` GiB of zeros."""
    net = Network.from_layer_sizes([4, 3], activations=["softmax"], seed=0)
    archive = np.load(io.BytesIO(net.to_bytes()))
    n = int(gib * 1024**3 / 4)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("header.npy", npy(archive["header"]))
        with bomb.open("params.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_2_0(member, {"descr": "<f4", "fortran_order": False, "shape": (n,)})
            zeros = bytes(16 * MiB)
            for _ in range(n * 4 // len(zeros)):
                member.write(zeros)
    return out.getvalue()


def dense(units: int, activation: str = "relu") -> dict:
    return {"type": "dense", "activation": activation, "units": units, "weight_init": "xavier", "bias_init": "zeros"}


def crafted_files() -> dict[str, bytes]:
    config = {"seed": 0, "dtype": "float32", "loss": "auto"}
    huge = {**config, "input_size": 20000, "layers": [dense(20000, "softmax")]}
    deep = {**config, "input_size": 4, "layers": [dense(4) for _ in range(4999)] + [dense(3, "softmax")]}
    small = npy(np.zeros(1, np.float32))
    return {"zip bomb (.npz inflating to 2 GiB)": zip_bomb(),
            "1 KB file declaring a 20000x20000 layer": npz({"header.npy": header_of(huge), "params.npy": small}),
            "a file declaring 5000 layers": npz({"header.npy": header_of(deep), "params.npy": small})}


def class_3() -> bool:
    print("class 3: crafted model imports (POST /models/import)")
    ok = True
    files = crafted_files()
    for name, data in files.items():
        with server() as (url, pid):  # one server each: a refused file must not leave work behind for the next
            time.sleep(0.5)
            with Watch(url, pid) as watch:
                started = time.perf_counter()
                try:
                    status = httpx.post(f"{url}/models/import", content=data, timeout=30).status_code
                except httpx.TimeoutException:
                    status = "timeout 30 s"
                seconds = time.perf_counter() - started
            ok &= report(f"{name} ({len(data) / 1024:,.0f} KiB)", seconds, watch, status)
    return ok


# -- class 10: event streams ----------------------------------------------------------------
def class_10(n: int = 200) -> bool:
    print(f"class 10: {n} event streams at once on a job that never ends (NN_MAX_STREAMS default)")
    with server() as (url, pid):
        httpx.post(f"{url}/models", json={"model_id": "s", "layer_sizes": [4, 3]})
        job_id = httpx.post(f"{url}/models/s/training-jobs", json={"min_samples": 10**5}).json()["job_id"]
        with httpx.Client(timeout=10) as http:  # throughput of a simple read without streams
            for _ in range(100):
                http.get(f"{url}/models/s")  # warm-up
            started, count = time.perf_counter(), 0
            while time.perf_counter() - started < 3:
                http.get(f"{url}/models/s")
                count += 1
            quiet_rate = count / (time.perf_counter() - started)
        statuses: list = []
        stop = threading.Event()

        def listen():
            try:
                with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=30) as response:
                    statuses.append((response.status_code, response.headers.get("retry-after")))
                    for _ in response.iter_lines():
                        if stop.is_set():
                            return
            except httpx.HTTPError as exc:
                statuses.append((type(exc).__name__, None))

        threads = [threading.Thread(target=listen, daemon=True) for _ in range(n)]
        with Watch(url, pid) as watch:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(statuses) < n and time.monotonic() < deadline:
                time.sleep(0.05)
            with httpx.Client(timeout=10) as http:
                started, count = time.perf_counter(), 0
                while time.perf_counter() - started < 3:
                    http.get(f"{url}/models/s")
                    count += 1
                busy_rate = count / (time.perf_counter() - started)
            stop.set()
        open_ = sum(1 for status, _ in statuses if status == 200)
        refused = [(status, retry) for status, retry in statuses if status == 503]
    ok = open_ < n and refused and all(retry for _, retry in refused) and busy_rate > quiet_rate / 1.5
    print(f"  {open_} streams open, {len(refused)} refused with 503 + Retry-After; GET /models/s {quiet_rate:.0f}/s alone, "
          f"{busy_rate:.0f}/s beside the streams (goal: at least 2/3); /health p99 {watch.p99_health_ms:.1f} ms, worst "
          f"{watch.worst_health_ms:.1f} ms (while 200 connections open); "
          f"RSS +{watch.growth:.1f} MiB  {verdict(ok)}")
    return ok


# -- JSON throughput, before and after ------------------------------------------------------------
MNIST_MODEL = {"model_id": "mnist", "layer_sizes": [784, 256, 128, 10], "activations": ["relu", "relu", "softmax"]}


def parse_stage(body: bytes, model) -> str:
    """In this process, best of 3: the old parse (json.loads, then the schema) against the new (orjson, then the schema)."""
    def best(parse) -> float:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            model.model_validate(parse(body))
            times.append(time.perf_counter() - started)
        return min(times)

    old, new = best(json.loads), best(orjson.loads)
    return f"{1000 * old:.0f} ms -> {1000 * new:.0f} ms ({old / new:.1f}x)"


def json_classes(baseline: Path | None, repeats: int) -> bool:
    """Both servers run side by side and take turns, request by request, so machine load hits both alike."""
    rng = np.random.default_rng(0)
    append = json.dumps({"inputs": rng.random((2000, 784)).round(4).tolist(),
                         "targets": rng.integers(0, 10, 2000).tolist()}).encode()
    output = json.dumps({"inputs": rng.random((1024, 784)).round(4).tolist()}).encode()
    roots = {"after": ROOT, **({"before": baseline} if baseline else {})}
    print(f"JSON throughput (median of {repeats} turns, samples/s; the servers take turns): this checkout"
          + (f" vs {baseline}" if baseline else " (no --baseline: no ratio)"))
    ok = True
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(server(root, NN_MAX_BUFFER_SAMPLES=10**7))[0] for name, root in roots.items()}
        http = stack.enter_context(httpx.Client(timeout=120))
        for url in urls.values():
            assert http.post(f"{url}/models", json=MNIST_MODEL).status_code == 201
        for name, path, body, rows, model in [("append 2000x784", "/models/mnist/samples", append, 2000, SamplesCreate),
                                              ("output 1024x784", "/models/mnist/output", output, 1024, OutputRequest)]:
            times: dict[str, list[float]] = {key: [] for key in urls}
            for turn in range(repeats + 1):  # the first turn warms up
                for key, url in urls.items():
                    started = time.perf_counter()
                    http.post(f"{url}{path}", content=body, headers=JSON).raise_for_status()
                    if turn:
                        times[key].append(time.perf_counter() - started)
            rate = {key: rows / statistics.median(values) for key, values in times.items()}
            best = {key: rows / min(values) for key, values in times.items()}
            stage = parse_stage(body, model)
            if "before" in rate:
                ratio = rate["after"] / rate["before"]
                ok &= ratio >= 2
                print(f"  {name:<18} before {rate['before']:9,.0f}/s  after {rate['after']:9,.0f}/s  ratio {ratio:4.1f}x "
                      f"(goal >= 2x)  {verdict(ratio >= 2)};  best turns {best['before']:,.0f}/s -> {best['after']:,.0f}/s "
                      f"({best['after'] / best['before']:.1f}x);  parse+validate alone: {stage}")
            else:
                print(f"  {name:<18} {rate['after']:9,.0f}/s")
    return ok


# -- a long job: work per epoch must not grow with the epochs done ------------------------------------
LONG_MODEL = {"layer_sizes": [4, 8, 3], "activations": ["relu", "softmax"]}


@contextlib.contextmanager
def backend_server(root: Path, backend: str, redis_url: str):
    """A service of checkout ``root`` with one worker: its own (embedded), or `python main.py worker` (redis; a fresh
    key prefix and queue, deleted afterwards)."""
    if backend == "sqlite":
        with server(root, NN_WORKERS=1) as (url, _):
            yield url
        return
    tag = f"bench-long-{os.getpid()}-{time.monotonic_ns()}"
    env = {"NN_BACKEND": "redis", "NN_REDIS_URL": redis_url, "NN_REDIS_PREFIX": tag, "NN_REDIS_QUEUE": tag}
    with server(root, **env) as (url, _):
        worker = subprocess.Popen([sys.executable, "main.py", "worker"], cwd=root, env={**os.environ, **env},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            yield url
        finally:
            stop_server(worker, timeout=5)
            import redis  # noqa: PLC0415 (only this class needs it)
            client = redis.Redis.from_url(redis_url)
            for key in client.scan_iter(match=f"{tag}:*", count=1000):
                client.delete(key)
            for key in client.scan_iter(match=f"rq:*{tag}*", count=1000):
                client.delete(key)


def long_job(url: str, epochs: int) -> tuple[float, float, int]:
    """(duration_seconds, the sum of its epochs' times, epochs in its history) of one job of ``epochs`` epochs."""
    rng = np.random.default_rng(0)
    body = {"epochs": epochs, "batch_size": 6, "inputs": rng.random((6, 4)).round(3).tolist(), "targets": [0, 1, 2, 0, 1, 2]}
    with httpx.Client(timeout=60) as http:
        model_id = f"long-{epochs}"
        http.post(f"{url}/models", json={**LONG_MODEL, "model_id": model_id}).raise_for_status()
        job_id = http.post(f"{url}/models/{model_id}/training-jobs", json=body).json()["job_id"]
        deadline = time.monotonic() + 3600
        while True:
            job = http.get(f"{url}/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job_id} did not end within an hour")
            time.sleep(1.0)
    assert job["status"] == "succeeded", job
    return job["duration_seconds"], sum(h.get("time") or 0.0 for h in job["history"]), len(job["history"])


def class_long(baseline: Path | None, epochs: int, backends: list[str], redis_url: str) -> bool:
    """Per checkout and backend, a job of epochs/10 then one of ``epochs``: what each epoch costs beyond training
    ((duration - training) / epochs) must not grow with the epochs (goal: the long job's at most 2x the short one's)."""
    roots = {**({"before": baseline} if baseline else {}), "after": ROOT}
    short = max(1, epochs // 10)
    print(f"long: jobs of {short:,} and {epochs:,} epochs (4-8-3, 6 rows, batch 6) per checkout and backend; "
          "duration_seconds vs the sum of the epochs' times" + (f"; this checkout vs {baseline}" if baseline else ""))
    ok = True
    for backend in backends:
        for name, root in roots.items():
            with backend_server(root, backend, redis_url) as url:
                runs = [long_job(url, n) for n in (short, epochs)]
            (d0, t0, n0), (d1, t1, n1) = runs
            per0, per1 = 1000 * (d0 - t0) / n0, 1000 * (d1 - t1) / n1
            good = name == "before" or per1 <= 2 * max(per0, 0.5)
            ok &= good
            print(f"  {backend:<6} {name:<6} {epochs:,} epochs: duration {d1:7.1f} s, training {t1:5.2f} s "
                  f"({d1 / t1:5.1f}x); beyond training per epoch {per0:6.2f} ms at {short:,} epochs, {per1:6.2f} ms at "
                  f"{epochs:,} ({per1 / per0:5.1f}x)" + ("" if name == "before" else f" (goal <= 2x)  {verdict(good)}"))
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", default="1,2,3,10,json,long", help="comma-separated: 1, 2, 3, 10, json, long")
    parser.add_argument("--baseline", type=Path, help="another checkout (git worktree) for the JSON before/after")
    parser.add_argument("--methods", type=int, default=10_000, help="made-up methods of class 1")
    parser.add_argument("--repeats", type=int, default=5, help="requests per JSON measurement")
    parser.add_argument("--epochs", type=int, default=3000, help="epochs of the long job")
    parser.add_argument("--backends", default="sqlite,redis", help="backends of the long job: sqlite, redis")
    parser.add_argument("--redis-url", default=os.environ.get("NN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12"),
                        help="the Redis of the long job's redis backend (a fresh key prefix, deleted afterwards)")
    args = parser.parse_args()
    classes = args.classes.split(",")
    results = {}
    if "1" in classes:
        results["1"] = class_1(args.methods)
    if "2" in classes:
        results["2"] = class_2()
    if "3" in classes:
        results["3"] = class_3()
    if "10" in classes:
        results["10"] = class_10()
    if "json" in classes:
        results["json"] = json_classes(args.baseline, args.repeats)
    if "long" in classes:
        results["long"] = class_long(args.baseline, args.epochs, args.backends.split(","), args.redis_url)
    print("summary: " + ", ".join(f"class {k} {verdict(v)}" for k, v in results.items()))


if __name__ == "__main__":
    os.environ.setdefault("NN_LOG_LEVEL", "warning")
    main()
