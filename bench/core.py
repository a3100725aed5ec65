"""Training throughput of the NumPy core against PyTorch and against the GEMM ceiling.

    python bench/core.py                    # the table (about 1-2 minutes)
    python bench/core.py --json out.json    # also write every measurement as JSON
    python bench/core.py --quick            # fewer repetitions, for a smoke test

Network: 784-256-128-10, relu/relu/softmax, Adam (lr 1e-3), cross-entropy, float32, synthetic
data (standard normal inputs, uniform labels). Measured, interleaved in one run so that machine
noise hits every column alike:

- core fit:   `Network.fit(x, y, epochs=1, batch_size=b)` on 8192 samples, i.e. the real training
              loop with shuffling, batch gathering, loss and accuracy bookkeeping.
- core step:  `Network._train_step` on preallocated batches (forward, backward, Adam; no shuffling).
- torch:      the same network in PyTorch (if installed; `pip install torch==2.13.0`), same
              initial weights, `torch.optim.Adam`, `CrossEntropyLoss`, float32,
              `torch.set_num_threads` = NumPy's BLAS threads; a loop that shuffles and gathers
              each batch and keeps the same loss/accuracy sums as `fit` does.
- torch step: the PyTorch step alone on preallocated batches.
- GEMM ceiling: only the 8 matrix products of one training step (3 forward, 3 weight
              gradients, 2 input gradients; the first layer needs none) with `np.matmul(out=)`,
              same shapes, dtype, memory layouts and threads. No implementation of this step on
              this BLAS can beat it.

Each measurement is short (a few tenths of a second) and repeated; the table shows the best
repetition of each column (on a shared machine the best is the least disturbed) and ratios of those
bests; the JSON also holds every repetition and the medians of per-repetition ratios. `--threads N`
limits NumPy's BLAS (via threadpoolctl) and PyTorch to N threads. Also single-sample `predict` latency.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from neural_net import Network  # noqa: E402

SIZES = (784, 256, 128, 10)
LR = 1e-3
N_SAMPLES = 4096


def blas_threads():
    """NumPy's BLAS thread count (threadpoolctl when available, else the usable cores)."""
    try:
        from threadpoolctl import threadpool_info
        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        if counts:
            return int(counts[0])
    except ImportError:
        pass
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def make_core(seed=0):
    return Network.from_layer_sizes(list(SIZES), activations=["relu", "relu", "softmax"], seed=seed)


def core_fit_runner(x, labels, batch):
    net = make_core()
    net.fit(x[:batch * 2], labels[:batch * 2], epochs=1, batch_size=batch, learning_rate=LR)  # warm-up

    def run():
        # epochs=1 each call: same optimiser settings, so Adam's state carries on (like resuming).
        net.fit(x, labels, epochs=1, batch_size=batch, learning_rate=LR)
        return x.shape[0]
    return run, net


def core_step_runner(x, labels, batch):
    net = make_core()
    loss = net.loss
    optimizer = net._get_optimizer("adam", LR)
    y = loss.prepare(labels, SIZES[-1], net.dtype)
    n_batches = x.shape[0] // batch
    xs = [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    ys = [np.ascontiguousarray(y[i * batch:(i + 1) * batch]) for i in range(n_batches)]

    def run():
        for xb, yb in zip(xs, ys):
            net._train_step(xb, yb, loss, optimizer, LR, 0.0, 0.0, None)
        return n_batches * batch
    run()
    return run


def torch_runners(x, labels, batch, weights, threads):
    import torch
    torch.set_num_threads(threads)
    model = torch.nn.Sequential(
        torch.nn.Linear(SIZES[0], SIZES[1]), torch.nn.ReLU(),
        torch.nn.Linear(SIZES[1], SIZES[2]), torch.nn.ReLU(),
        torch.nn.Linear(SIZES[2], SIZES[3]),
    )
    with torch.no_grad():
        for linear, layer in zip([m for m in model if isinstance(m, torch.nn.Linear)], weights):
            linear.weight.copy_(torch.from_numpy(layer["weights"].T.copy()))
            linear.bias.copy_(torch.from_numpy(layer["biases"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = torch.nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64))
    n = x.shape[0]
    generator = torch.Generator().manual_seed(0)

    def step(xb, yb):
        optimizer.zero_grad(set_to_none=True)
        out = model(xb)
        value = criterion(out, yb)
        value.backward()
        optimizer.step()
        return out, value

    def run_loop():
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch):
            index = order[start:start + batch]
            xb, yb = xt.index_select(0, index), yt.index_select(0, index)
            out, value = step(xb, yb)
            loss_sum += value.item() * xb.shape[0]
            correct += int((out.argmax(1) == yb).sum())
        return n

    n_batches = n // batch
    xs = [xt[i * batch:(i + 1) * batch].clone() for i in range(n_batches)]
    ys = [yt[i * batch:(i + 1) * batch].clone() for i in range(n_batches)]

    def run_step():
        for xb, yb in zip(xs, ys):
            step(xb, yb)
        return n_batches * batch

    run_loop()
    run_step()
    return run_loop, run_step, model


def gemm_runner(batch, rng):
    """The 8 matrix products of one training step, with the core's layouts (x.T, W.T views)."""
    f32 = np.float32
    sizes = SIZES
    acts = [rng.standard_normal((batch, s)).astype(f32) for s in sizes]          # x, a1, a2, (z3 unused)
    weights = [(rng.standard_normal((a, b)) * 0.05).astype(f32) for a, b in zip(sizes[:-1], sizes[1:])]
    zs = [np.empty((batch, s), f32) for s in sizes[1:]]
    dzs = [(rng.standard_normal((batch, s)) * 0.01).astype(f32) for s in sizes[1:]]
    gws = [np.empty_like(w) for w in weights]
    dxs = [np.empty((batch, s), f32) for s in sizes[1:-1]]  # input grads of layers 2 and 3
    reps = max(1, N_SAMPLES // batch)

    def run():
        for _ in range(reps):
            for i in range(3):
                np.matmul(acts[i], weights[i], out=zs[i])
            for i in (2, 1, 0):
                np.matmul(acts[i].T, dzs[i], out=gws[i])
                if i > 0:
                    np.matmul(dzs[i], weights[i].T, out=dxs[i - 1])
        return reps * batch
    run()
    return run


def timed(run):
    start = time.perf_counter()
    samples = run()
    return samples / (time.perf_counter() - start)


def latency(fn, calls):
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--reps", type=int, default=11, help="interleaved repetitions per batch size")
    parser.add_argument("--threads", type=int, help="BLAS and PyTorch threads (default: NumPy's BLAS default)")
    parser.add_argument("--quick", action="store_true", help="2 repetitions")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds of idle time between measurements, so one library's spinning "
                             "worker threads do not steal cores from the next")
    parser.add_argument("--json", metavar="PATH", help="write every measurement to PATH")
    args = parser.parse_args(argv)
    reps = 2 if args.quick else args.reps

    if args.threads:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads, user_api="blas")
    threads = blas_threads()
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("PyTorch is not installed: torch columns skipped (pip install torch==2.13.0)")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_SAMPLES, SIZES[0])).astype(np.float32)
    labels = rng.integers(0, SIZES[-1], N_SAMPLES)

    results = {"machine": {"cores": os.cpu_count(), "blas_threads": threads, "python": platform.python_version(),
                           "numpy": np.__version__, "processor": platform.processor() or platform.machine(),
                           "torch": torch.__version__ if torch else None},
               "batches": {}}
    results["machine"]["load_average_before"] = os.getloadavg()
    print(f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, BLAS threads: {threads}, numpy {np.__version__}"
          + (f", torch {torch.__version__} ({threads} threads)" if torch else ""), flush=True)

    for batch in args.batches:
        runners = {}
        fit_run, net = core_fit_runner(x, labels, batch)
        runners["core_fit"] = fit_run
        runners["core_step"] = core_step_runner(x, labels, batch)
        if torch is not None:
            weights = make_core().get_weights()
            runners["torch"], runners["torch_step"], _ = torch_runners(x, labels, batch, weights, threads)
        runners["gemm_ceiling"] = gemm_runner(batch, rng)
        samples = {name: [] for name in runners}
        for rep in range(reps):
            names = list(runners)
            if rep % 2:
                names.reverse()  # alternate the order, so no column always runs right after another
            for name in names:
                time.sleep(args.pause)
                samples[name].append(timed(runners[name]))
        results["batches"][batch] = samples
        print(f"batch {batch}: " + ", ".join(f"{k} {max(v):,.0f}" for k, v in samples.items()), flush=True)

    # single-sample predict latency
    net = make_core()
    one = x[0].copy()
    lat = {"core_predict_us": latency(lambda: net.predict(one), 3000)}
    if torch is not None:
        _, _, model = torch_runners(x[:64], labels[:64], 32, net.get_weights(), threads)
        model.eval()

        def torch_predict():
            with torch.inference_mode():
                return model(torch.from_numpy(one).unsqueeze(0)).numpy()
        lat["torch_predict_us"] = latency(torch_predict, 3000)
        lat["core_predict_us"] = latency(lambda: net.predict(one), 3000)  # again, after torch
    results["predict_latency"] = lat

    results["machine"]["load_average_after"] = os.getloadavg()
    summarize(results)
    print()
    print(table(results, torch is not None))
    print()
    line = f"single-sample predict latency (median): core {lat['core_predict_us']:.1f} us"
    if "torch_predict_us" in lat:
        line += f", torch {lat['torch_predict_us']:.1f} us"
    print(line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
        print(f"wrote {args.json}")


def _median_ratio(a, b):
    return statistics.median([p / q for p, q in zip(a, b)])


PAIRS = (("core_fit", "torch"), ("core_step", "torch_step"), ("core_fit", "gemm_ceiling"), ("core_step", "gemm_ceiling"))


def summarize(results):
    for s in results["batches"].values():
        s["best"] = {k: max(v) for k, v in list(s.items()) if k not in ("best", "median_ratios")}
        s["median_ratios"] = {f"{a}/{b}": _median_ratio(s[a], s[b]) for a, b in PAIRS if a in s and b in s}


def table(results, with_torch):
    head = ["batch", "core fit (samples/s)", "core step (samples/s)"]
    if with_torch:
        head += ["torch (samples/s)", "torch step (samples/s)", "fit / torch", "step / torch step"]
    head += ["GEMM ceiling (samples/s)", "fit / ceiling", "step / ceiling"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for batch, s in results["batches"].items():
        best = s["best"]
        cells = [str(batch), f"{best['core_fit']:,.0f}", f"{best['core_step']:,.0f}"]
        if with_torch:
            cells += [f"{best['torch']:,.0f}", f"{best['torch_step']:,.0f}",
                      f"{best['core_fit'] / best['torch']:.2f}x", f"{best['core_step'] / best['torch_step']:.2f}x"]
        cells += [f"{best['gemm_ceiling']:,.0f}", f"{100 * best['core_fit'] / best['gemm_ceiling']:.0f}%",
                  f"{100 * best['core_step'] / best['gemm_ceiling']:.0f}%"]
        rows.append("| " + " | ".join(cells) + " |")
    rows.append("")
    rows.append("median of per-repetition ratios: " + "; ".join(
        f"batch {batch}: " + ", ".join(f"{k} {v:.2f}" for k, v in s["median_ratios"].items())
        for batch, s in results["batches"].items()))
    return "\n".join(rows)


if __name__ == "__main__":
    main()
