"""CSV readers side by side on one 60,000 x 785 MNIST-like integer CSV (issue 12, section 3: ">= 50,000 rows/s").

    python bench/csv_readers.py                  # 3 interleaved rounds of every reader installed
    python bench/csv_readers.py --rounds 5 --loadtxt --json out.json

Readers (each in this process, from the file on disk, interleaved round by round so that the noise of
a shared machine hits every column alike; the table shows min / median / max rows/s, the median rows
per CPU-second of this process (all its threads; less disturbed by other load than wall time) and the
load average before and after):

- service:    `api.dataset_formats.convert_csv`, the service's own reader, the whole conversion: row
              count, parse (NumPy whole-array, blocks in threads), finite checks, float32 NPZ written.
- pandas-c:   `pandas.read_csv(engine="c", dtype=float32)` then `.to_numpy()` (if pandas is installed).
- pyarrow:    `pyarrow.csv.read_csv` (multithreaded, float32 columns) then one (n, 785) NumPy array
              (if pyarrow is installed).
- loadtxt:    `numpy.loadtxt(dtype=float32)` (with --loadtxt; slow).

The third-party readers are timed to an in-memory array only (no checks, nothing written), so their
figures flatter them against `service`. pandas and pyarrow are benchmark-only (bench/requirements.txt),
never dependencies of the service. The CSV is written once to --path (default under /tmp) and reused.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from api.dataset_formats import convert_csv  # noqa: E402
from bench.datasets import write_csv  # noqa: E402


def readers(path: Path, scratch: Path, loadtxt: bool) -> dict:
    found = {"service": lambda: convert_csv(path, scratch / "d.npz", 10**9, ["label"])}
    try:
        import pandas

        found["pandas-c"] = lambda: pandas.read_csv(path, engine="c", dtype=np.float32).to_numpy()
    except ImportError:
        pass
    try:
        import pyarrow
        import pyarrow.csv

        names = path.open().readline().strip().split(",")
        types = pyarrow.csv.ConvertOptions(column_types={name: pyarrow.float32() for name in names})

        def arrow() -> np.ndarray:
            table = pyarrow.csv.read_csv(path, convert_options=types)
            out = np.empty((table.num_rows, table.num_columns), np.float32)
            for i, column in enumerate(table.columns):
                out[:, i] = column.to_numpy()
            return out

        found["pyarrow"] = arrow
    except ImportError:
        pass
    if loadtxt:
        found["loadtxt"] = lambda: np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loadtxt", action="store_true", help="also time numpy.loadtxt (slow)")
    parser.add_argument("--path", type=Path, help="the CSV (written once if missing); default under /tmp")
    parser.add_argument("--json", help="also write every measurement to this file")
    args = parser.parse_args()
    path = args.path or Path(tempfile.gettempdir()) / f"nn_bench_mnist_like_{args.rows}.csv"
    if not path.exists():
        write_csv(path, args.rows)
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {}
    cpu_rates: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        found = readers(path, Path(scratch), args.loadtxt)
        for _ in range(args.rounds):
            for name, read in found.items():
                started, cpu_started = time.perf_counter(), time.process_time()
                read()
                rates.setdefault(name, []).append(args.rows / (time.perf_counter() - started))
                cpu_rates.setdefault(name, []).append(args.rows / (time.process_time() - cpu_started))
    load_after = os.getloadavg()[0]
    print(f"{args.rows:,} x 785 CSV ({path.stat().st_size / 1e6:.0f} MB), {args.rounds} interleaved rounds, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before, {load_after:.1f} after")
    print(f"  {'reader':<10} {'min':>10} {'median':>10} {'max':>10}  rows/s  {'rows/CPU-s':>10}  goal >= 50,000")
    for name, values in rates.items():
        best = max(values)
        print(f"  {name:<10} {min(values):>10,.0f} {statistics.median(values):>10,.0f} {best:>10,.0f}"
              f"          {statistics.median(cpu_rates[name]):>10,.0f}  {'met' if best >= 50_000 else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": args.rows, "load": [load_before, load_after], "rates": rates,
                                              "rows_per_cpu_second": cpu_rates},
                                              indent=2))


if __name__ == "__main__":
    main()
