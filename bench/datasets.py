"""Dataset ingest against a real `python main.py` on loopback: NPZ upload vs JSON appends, server memory
during the upload, and CSV parsing. Every figure is measured in this one run and printed with its goal.
Each is one timing of a fresh server (what a first upload sees); `bench/data_path.py` measures the same
ratios as medians of interleaved rounds, steadier on a noisy machine, and its table is the README's.

    python bench/datasets.py                         # embedded backend (SQLite), 60,000 x 784
    python bench/datasets.py --backend redis         # NN_BACKEND=redis on NN_BENCH_REDIS_URL (db 5 by default)
    python bench/datasets.py --json-rows 60000       # time JSON appends of all the rows (slow), not 10,000

Goals (issue 12, section 3):
  - a 60,000 x 784 float32 NPZ uploads >= 20x faster in samples/s than JSON appends of the same rows
    (JSON appends go in 2,000-row requests, the most a 32 MB request holds; their rate is measured
    over --json-rows rows, the first of the same rows);
  - the server's RSS grows by <= 3x the file size during the upload (peak RSS from /proc, VmHWM, reset
    before the upload);
  - a 60,000-row, 785-column CSV (MNIST-like integers) loads at >= 50,000 rows/s; numpy.loadtxt on
    the same file is timed beside it (--no-loadtxt to skip).
"""

import argparse
import http.client
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.servers import start_server, stop_server  # noqa: E402

OUT = ROOT / "bench" / "out"


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for process {pid}")


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def post_file(url: str, path: str, body: bytes, media: str) -> tuple[int, dict]:
    """A raw-body POST with the standard library's client (one sendall): httpx's own cost for a 200 MB
    body is larger than the server's, and would be measured instead of the service."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": media, "Content-Length": str(len(body))})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def mnist_like(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pixels = (rng.random((n, 784)) < 0.19) * rng.integers(1, 256, (n, 784))
    return pixels.astype(np.uint8), rng.integers(0, 10, n)


def csv_file(n: int) -> Path:
    """60,000 x 785 integers (784 pixels and a label), cached in bench/out (never committed)."""
    path = OUT / f"mnist_like_{n}.csv"
    if not path.exists():
        OUT.mkdir(exist_ok=True)
        write_csv(path, n)
    return path


def write_csv(path: Path, n: int) -> None:
    """n rows of 784 pixel integers and a label, with a header row."""
    x, y = mnist_like(n, seed=1)
    table = [str(i).encode() for i in range(256)]
    with open(path, "wb") as handle:
        handle.write(",".join([f"p{i}" for i in range(784)] + ["label"]).encode() + b"\n")
        for row, label in zip(x.tolist(), y.tolist()):
            handle.write(b",".join([table[v] for v in row] + [table[label]]) + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--json-rows", type=int, default=10_000, help="rows appended as JSON to measure its rate")
    parser.add_argument("--no-loadtxt", action="store_true", help="skip timing numpy.loadtxt on the CSV")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    x, y = mnist_like(args.rows)
    inputs = (x / 255.0).astype(np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs, targets=y.astype(np.int64))
    npz = buffer.getvalue()
    env = {"NN_WORKERS": 0, "NN_LOG_LEVEL": "warning"}
    if args.backend == "redis":
        env.update(NN_BACKEND="redis", NN_REDIS_URL=os.environ.get("NN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/5"),
                   NN_REDIS_PREFIX=f"bench-ds-{uuid.uuid4().hex[:6]}")
    results: dict = {"backend": args.backend, "rows": args.rows}
    with tempfile.TemporaryDirectory() as data_dir:
        url, process = start_server(data_dir, **env)
        try:
            with httpx.Client(base_url=url, timeout=600) as client:
                client.post("/models", json={"model_id": "bench", "layer_sizes": [784, 10], "activations": ["softmax"]})
                # NPZ upload, with the server's peak RSS
                before = rss_kib(process.pid)
                reset_peak(process.pid)
                started = time.perf_counter()
                status, body = post_file(url, "/datasets", npz, "application/x-npz")
                npz_seconds = time.perf_counter() - started
                assert status == 201, body
                growth = (rss_kib(process.pid, "VmHWM") - before) * 1024
                results.update(npz_bytes=len(npz), npz_seconds=npz_seconds, npz_samples_per_s=args.rows / npz_seconds,
                               rss_growth_bytes=growth, rss_growth_x_file=growth / len(npz))
                dataset_id = body["dataset_id"]
                # the same rows as JSON appends, 2,000 per request, their bodies built before the clock starts (as the
                # NPZ's: the client's json.dumps took 3-4x the server's time and was measured as the service's)
                n_json = min(args.json_rows, args.rows)
                bodies = [json.dumps({"inputs": inputs[start:start + 2000].tolist(), "targets": y[start:start + 2000].tolist()})
                          for start in range(0, n_json, 2000)]
                started = time.perf_counter()
                for body in bodies:
                    r = client.post("/models/bench/samples", content=body, headers={"content-type": "application/json"})
                    assert r.status_code == 200, r.text
                json_seconds = time.perf_counter() - started
                results.update(json_rows=n_json, json_seconds=json_seconds, json_samples_per_s=n_json / json_seconds)
                client.delete("/models/bench/samples")
                # a dataset into the buffer (a copy), for reference
                started = time.perf_counter()
                assert client.post("/models/bench/samples", json={"dataset": dataset_id}).status_code == 200
                results["dataset_to_buffer_samples_per_s"] = args.rows / (time.perf_counter() - started)
                # CSV upload
                path = csv_file(args.rows)
                text = path.read_bytes()
                started = time.perf_counter()
                status, body = post_file(url, "/datasets?target=label", text, "text/csv")
                csv_seconds = time.perf_counter() - started
                assert status == 201, body
                results.update(csv_bytes=path.stat().st_size, csv_seconds=csv_seconds, csv_rows_per_s=args.rows / csv_seconds)
        finally:
            stop_server(process)
    from api.dataset_formats import convert_csv

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        convert_csv(path, Path(scratch) / "d.npz", args.rows + 1)
        results["csv_parse_rows_per_s"] = args.rows / (time.perf_counter() - started)
    if not args.no_loadtxt:
        started = time.perf_counter()
        np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
        results["loadtxt_rows_per_s"] = args.rows / (time.perf_counter() - started)

    ratio = results["npz_samples_per_s"] / results["json_samples_per_s"]
    print(f"backend {args.backend}, {args.rows:,} x 784 float32 ({len(npz) / 1e6:.0f} MB NPZ, "
          f"{results['csv_bytes'] / 1e6:.0f} MB CSV), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    rows = [
        ("NPZ upload", f"{results['npz_samples_per_s']:,.0f} samples/s ({npz_seconds:.2f} s)", ""),
        ("JSON appends (2,000/request)", f"{results['json_samples_per_s']:,.0f} samples/s over {n_json:,} rows", ""),
        ("NPZ vs JSON", f"{ratio:.1f}x", ">= 20x " + ("met" if ratio >= 20 else "NOT met")),
        ("server RSS growth in upload", f"{growth / 1e6:.0f} MB = {results['rss_growth_x_file']:.2f}x the file",
         "<= 3x " + ("met" if results["rss_growth_x_file"] <= 3 else "NOT met")),
        ("CSV upload (end to end)", f"{results['csv_rows_per_s']:,.0f} rows/s ({csv_seconds:.2f} s)",
         ">= 50,000 " + ("met" if results["csv_rows_per_s"] >= 50_000 else "NOT met")),
        ("CSV parse alone (in process)", f"{results['csv_parse_rows_per_s']:,.0f} rows/s", ""),
        ("dataset -> buffer copy", f"{results['dataset_to_buffer_samples_per_s']:,.0f} samples/s", ""),
    ]
    if "loadtxt_rows_per_s" in results:
        rows.append(("numpy.loadtxt, same CSV", f"{results['loadtxt_rows_per_s']:,.0f} rows/s",
                     f"parse is {results['csv_parse_rows_per_s'] / results['loadtxt_rows_per_s']:.1f}x loadtxt"))
    for name, value, goal in rows:
        print(f"  {name:<30} {value:<45} {goal}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
