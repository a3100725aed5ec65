"""Command line for the training service (`nn` once the package is installed, or `python -m client`).

    python -m client train --model moons --data examples/data/moons.csv --create 2,16,1 --activations relu,sigmoid --epochs 50 --watch
    python -m client status JOB_ID [--watch] [--history] [--json]
    python -m client jobs [--model M] [--status S] [--kind training|search] [--limit N]
    python -m client cancel JOB_ID
    python -m client predict --model moons --data examples/data/moons-new.csv
    python -m client export --model moons --out moons.onnx --format onnx
    python -m client whoami [--json]

CSV files hold one sample per row, the inputs first and the last `--targets N` columns (default 1)
as targets; a header row is skipped. .npz files hold arrays `x` and `y` (or `inputs` and `targets`).
Set NN_URL and NN_API_KEY (or --url and --api-key) to reach a service elsewhere.
"""
import argparse
import csv
import json
import math
import os
import re
import sys
from datetime import datetime
from urllib.parse import unquote

import httpx
import numpy as np

from .api import TERMINAL, ApiError, Client, _id, trials_ran


def load_data(path, n_targets=1, with_targets=True):
    """(inputs, targets) from a CSV or .npz file; targets is None when with_targets is False (predict: the file
    holds inputs only). A ValueError names the file, and the line and column where a CSV is not rows of numbers,
    and says what to give: a train file holds inputs then targets, a predict file inputs."""
    give = _wanted(with_targets)
    extension = os.path.splitext(path)[1].lower()
    if extension == ".npy":
        raise ValueError(f"{path} is one .npy array; give {give}")
    if extension == ".npz":
        return _load_npz(path, with_targets)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = [(number, row) for number, row in enumerate(csv.reader(handle), 1) if any(cell.strip() for cell in row)]
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text: give {give}") from None
    if rows and not all(_is_number(cell) for cell in rows[0][1]):
        rows = rows[1:]  # a header
    if not rows:
        raise ValueError(f"{path} holds no rows of numbers; give one sample per line, "
                         f"{'inputs then targets' if with_targets else 'its inputs'}")
    width = len(rows[0][1])
    try:
        data = np.array([row for _, row in rows], dtype=float)
    except ValueError:  # ragged, or text: found and named below, a cell at a time
        data = None
    if data is None or not np.isfinite(data).all():
        for number, row in rows:
            if len(row) != width:
                raise ValueError(f"{path}, line {number}: {len(row)} values where line {rows[0][0]} has {width}")
            for column, cell in enumerate(row, 1):
                if not _is_number(cell):
                    raise ValueError(f"{path}, line {number}, column {column}: {cell.strip()[:40]!r} is not a number")
                if not math.isfinite(float(cell)):
                    raise ValueError(f"{path}, line {number}, column {column} is {cell.strip()}: send finite numbers")
    if not with_targets:
        return data, None
    if not 1 <= n_targets < width:
        raise ValueError(f"--targets {n_targets}: {path} has {width} columns, so 1 to {width - 1} of them can be "
                         "targets (the last ones), leaving at least one input")
    x, y = data[:, :-n_targets], data[:, -n_targets:]
    return x, (y[:, 0] if n_targets == 1 else y)


def _wanted(with_targets):
    """What a data file holds, for messages: train's file has targets, predict's only inputs."""
    if with_targets:
        return "a CSV (inputs, then targets), or an .npz holding x and y (numpy.savez(path, x=..., y=...))"
    return "a CSV of inputs (one sample per row), or an .npz holding x (numpy.savez(path, x=...))"


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _load_npz(path, with_targets):
    with open(path, "rb") as handle:
        save = "numpy.savez(path, x=..., y=...)" if with_targets else "numpy.savez(path, x=...)"
        if not handle.read(2) == b"PK":
            raise ValueError(f"{path} is not an .npz (zip) file; save one with {save}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:  # a damaged zip (BadZipFile), truncated, ...
        raise ValueError(f"{path} is not an .npz file numpy reads ({error}); save one with {save}") from None
    with archive:
        names = ("x", "y") if "x" in archive.files else ("inputs", "targets")
        missing = [name for name in names[:1 + with_targets] if name not in archive.files]
        if missing:
            arrays = "x and y, or inputs and targets" if with_targets else "x, or inputs"
            raise ValueError(f"{path} has no array {missing[0]!r} ({arrays}); it holds: "
                             f"{', '.join(archive.files) or 'nothing'}")
        return archive[names[0]], archive[names[1]] if with_targets else None


def _hyper_parameters(args):
    options = {"epochs": args.epochs, "batch_size": args.batch_size, "optimizer": args.optimizer}
    for key in ("learning_rate", "validation_split"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    return options


def cmd_train(api, args):
    x, y = load_data(args.data, args.targets)
    if args.create:
        sizes = [int(v) for v in args.create.split(",")]
        options = {"activations": args.activations.split(",")} if args.activations else {}
        model = api.create_model(sizes, model_id=args.model, seed=args.seed, **options)
        print(f"created model {model['model_id']}", file=sys.stderr)
    if y is not None and y.ndim == 1 and args.labels:
        y = y.astype(int)
    args.fitting_sizes = fitting_sizes(x, y, args.labels)  # for the hint when the model does not exist
    try:
        job = api.train(args.model, inputs=x, targets=y, **_hyper_parameters(args))
    except ApiError as error:
        if error.status_code != 413:
            raise
        # more rows than one request takes: the file goes up as a dataset (streamed NPZ) and the job trains on it
        dataset = api.upload_dataset((x, y), name=os.path.basename(args.data))
        print(f"{len(x)} samples are more than one request takes: uploaded as dataset {dataset['dataset_id']}",
              file=sys.stderr)
        job = api.train(args.model, dataset=dataset["dataset_id"], **_hyper_parameters(args))
    print(job.job_id)
    if args.watch:
        record = watch(job)
        return 0 if record["status"] == "succeeded" else 1
    return 0


def fitting_sizes(x, y, labels):
    """Layer sizes that fit a training file, for the hint to create its model: its inputs, a hidden layer of 16,
    and one output per target column (one per class, for --labels with more than two classes)."""
    outputs = 1 if y.ndim == 1 else y.shape[1]
    if labels and y.ndim == 1 and len(y) and int(y.max()) + 1 > 2:
        outputs = int(y.max()) + 1
    return [x.shape[1] if x.ndim == 2 else 1, 16, outputs]


def watch(job):
    """job.wait() with its progress bar; Ctrl-C stops watching, not the job, and says how to go on."""
    try:
        return job.wait(progress=True)
    except KeyboardInterrupt:
        print(f"\nstopped watching; job {job.job_id} goes on: `nn status {job.job_id} --watch` follows it again, "
              f"`nn cancel {job.job_id}` stops it", file=sys.stderr)
        raise SystemExit(130) from None
    except BaseException:
        print(file=sys.stderr)  # the bar's line ends before the error's
        raise


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _metrics_line(values, keys=("loss", "accuracy", "val_loss", "val_accuracy")):
    return "  ".join(f"{key} {values[key]:.4g}" for key in keys if isinstance(values.get(key), (int, float)))


def summary(record, history_shown=False):
    """A job on one screen: what, its state, where it is (epoch, loss, accuracy), and how long is left."""
    progress = record.get("progress") or {}
    history = record.get("history") or []
    last = history[-1] if history else {}
    lines = [f"job {record['job_id']} ({record.get('kind', 'training')}) on model {record['model_id']}: {record['status']}"]
    epochs = progress.get("epochs") or (record.get("params") or {}).get("epochs")
    running = record["status"] in ("running", "queued", "buffering", "cancelling")
    # an ended job: the epochs it completed (its last progress event may be of the epoch it was stopped in)
    epoch = progress.get("epoch") if running and progress.get("epoch") else record.get("epochs_completed")
    if epoch:
        where = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
        if progress.get("percent") is not None and running:
            where += f" ({progress['percent']:.0f}%)"
        elif epochs:
            where += f" ({100 * epoch / epochs:.0f}%)"
        lines.append(where)
    search = record.get("search") or {}
    if search.get("trials_total"):
        running = progress.get("trials_running")
        lines.append(f"trials {trials_ran(search)}/{search['trials_total']} ran" + (f", {running} running" if running else ""))
    shown = _metrics_line(last)
    if not shown and progress.get("loss") is not None:
        shown = f"loss {progress['loss']:.4g} (this epoch so far)"
    if shown:
        lines.append(shown)
    if record["status"] in ("running", "queued", "buffering", "cancelling"):
        eta = progress.get("eta_seconds")
        extra = [f"ETA {_duration(eta)}" if eta is not None else "ETA unknown"]
        if progress.get("learning_rate") is not None:
            extra.append(f"learning rate {progress['learning_rate']:.3g}")
        if progress.get("samples_per_second"):
            extra.append(f"{progress['samples_per_second']:.0f} samples/s")
        if record["status"] == "buffering":
            extra = [f"waiting for {record.get('min_samples')} samples in the buffer"]
        lines.append("  ".join(extra))
    metrics = record.get("metrics") or {}
    final = _metrics_line(metrics, ("loss", "accuracy", "f1", "mae", "rmse", "r2"))
    if final:
        lines.append(f"final ({metrics.get('on', 'held-out')}): {final}")
    if search.get("best"):
        best = search["best"]
        lines.append(f"best trial {best['index']}: {search.get('metric')} {best['score']:.4g} with {json.dumps(best['params'])}")
    if record.get("error"):
        lines.append(f"error: {record['error']}")
    if len(history) > 1 and not history_shown:
        lines.append(f"{len(history)} epochs of history: add --history to see them")
    return "\n".join(lines)


def history_table(record):
    """One row per epoch: epoch, then every value the history holds (loss, accuracy, val_*, learning_rate, ...)."""
    history = record.get("history") or []
    if not history:
        return "no epochs finished yet"
    keys = [key for key in dict.fromkeys(k for row in history for k in row) if key not in ("epoch", "time", "samples_per_second")]
    rows = [["epoch", *keys]] + [[str(row.get("epoch", i + 1)), *(f"{row[k]:.4g}" if isinstance(row.get(k), (int, float))
                                                                   else "" for k in keys)] for i, row in enumerate(history)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows)


def cmd_status(api, args):
    job = api.job(args.job_id)
    record = watch(job) if args.watch else job.record
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(summary(record, history_shown=args.history))
    if args.history:
        print(history_table(record))
    return 0


def cmd_cancel(api, args):
    """POST /jobs/{id}/cancel: a waiting job ends cancelled at once, a running one is cancelling until its worker
    stops (within one batch). A job that already ended says how, with exit status 1: nothing was cancelled."""
    try:
        record = api._json("POST", f"/jobs/{_id(args.job_id)}/cancel")
    except ApiError as error:
        if error.status_code != 409:
            raise
        record = api.job(args.job_id).record
        if record["status"] not in TERMINAL:  # a 409 for another reason
            raise
        print(f"job {args.job_id} already ended ({record['status']}): nothing to cancel", file=sys.stderr)
        return 1
    if record["status"] == "cancelling":
        print(f"job {args.job_id} cancelling: it stops within one batch (`nn status {args.job_id} --watch` follows it "
              "to the end)")
    else:
        print(f"job {args.job_id} {record['status']}")
    return 0


JOB_STATUSES = ("buffering", "queued", "running", "cancelling", "succeeded", "failed", "cancelled")


def job_line(record):
    """One job on one line: id, model, kind, status, how far it got (epochs, or a search's trials), when submitted."""
    search = record.get("search") or {}
    if search.get("trials_total"):
        where = f"trials {trials_ran(search)}/{search['trials_total']}"
    else:
        progress = record.get("progress") or {}
        running = record["status"] in ("running", "cancelling")
        epoch = progress.get("epoch") if running and progress.get("epoch") else record.get("epochs_completed") or 0
        epochs = progress.get("epochs") or (record.get("params") or {}).get("epochs")
        where = f"epoch {epoch}/{epochs}" if epochs else f"epoch {epoch}"
    created = record.get("created_at") or ""
    try:
        created = datetime.fromisoformat(created.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        pass
    return [record["job_id"], record["model_id"], record.get("kind", "training"), record["status"], where, created]


def cmd_jobs(api, args):
    """GET /jobs, newest first, following next_offset until --limit jobs are listed; a line on stderr says when
    more match."""
    params = {key: value for key, value in (("model_id", args.model), ("status", args.status), ("kind", args.kind))
              if value is not None}
    records, offset, count = [], 0, 0
    while offset is not None and len(records) < args.limit:
        page = api._json("GET", "/jobs", params={**params, "offset": offset, "limit": min(500, args.limit - len(records))})
        records += page["data"]
        offset, count = page.get("next_offset"), page.get("count", len(records))
        if not page["data"]:
            break
    asked = " ".join(f"--{'model' if key == 'model_id' else key} {value}" for key, value in params.items())
    if not records:
        print(f"no jobs{' match ' + asked if asked else ''}", file=sys.stderr)
        return 0
    rows = [["JOB", "MODEL", "KIND", "STATUS", "PROGRESS", "CREATED"]] + [job_line(record) for record in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    if count > len(records):
        print(f"{len(records)} of {count} jobs, newest first: --limit {count} lists them all", file=sys.stderr)
    return 0


def cmd_predict(api, args):
    x, _ = load_data(args.data, with_targets=False)
    writer = csv.writer(sys.stdout)
    for result in outputs(api, args.model, x):
        for i, row in enumerate(result["outputs"]):
            extra = [result["predictions"][i]] if result.get("predictions") is not None else []
            writer.writerow([f"{v:.6g}" for v in row] + extra)
    return 0


def outputs(api, model_id, x, rows=10_000):
    """/output answers for `x`, `rows` at a time (NN_MAX_SAMPLES_PER_REQUEST's default), halving on a 413 (a
    service that takes fewer rows or bytes per request)."""
    start = 0
    while start < len(x):
        try:
            result = api.output(model_id, x[start:start + rows])
        except ApiError as error:
            if error.status_code != 413 or rows == 1:
                raise
            rows //= 2
            continue
        yield result
        start += rows


SCOPES = ("read", "train", "admin")


def whoami_text(me):
    """GET /auth/whoami on a few lines: the key's name and scope, what tenancy lets it see, and each operation
    it may not call with the scope that operation needs (train ones first, then admin ones)."""
    if not me["keys_required"]:
        return "the service has no API keys: full access (scope admin), every model and job"
    sees = f"only {me['name']}'s models and jobs" if me["tenancy"] and me["scope"] != "admin" else "every model and job"
    lines = [f"key {me['name']}: scope {me['scope']}, tenancy {'on' if me['tenancy'] else 'off'}, sees {sees}"]
    denied = sorted(((scope, *operation.split(" ", 1)) for operation, scope in me["denied"].items()),
                    key=lambda entry: (SCOPES.index(entry[0]), entry[2], entry[1]))
    if not denied:
        return lines[0] + "\nmay call every operation"
    lines.append(f"may not call these {len(denied)} operations (the scope each needs):")
    width = max(len(method) for _, method, _ in denied)
    lines += [f"  {scope:<5}  {method:<{width}}  {path}" for scope, method, path in denied]
    return "\n".join(lines)


def cmd_whoami(api, args):
    me = api.whoami()
    print(json.dumps(me, indent=2) if args.json else whoami_text(me))
    return 0


def cmd_export(api, args):
    api.export(args.model, args.out, format=args.format)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return value


def build_parser():
    prog = "nn" if os.path.basename(sys.argv[0]) == "nn" else "python -m client"  # the console script, or -m
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     epilog="Set NN_URL and NN_API_KEY instead of --url and --api-key.")
    parser.add_argument("--url", default=os.environ.get("NN_URL", "http://127.0.0.1:8000"),
                        help="base URL of the service (default: $NN_URL or http://127.0.0.1:8000)")
    parser.add_argument("--api-key", default=os.environ.get("NN_API_KEY"),
                        help="API key, when the service sets NN_API_KEYS (default: $NN_API_KEY)")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="submit a training job from a CSV or .npz file")
    train.add_argument("--model", required=True, help="model id")
    train.add_argument("--data", required=True, help="CSV (inputs then targets) or .npz (x, y)")
    train.add_argument("--targets", type=int, default=1, help="number of target columns at the end of each CSV row")
    train.add_argument("--labels", action="store_true", help="treat a single target column as integer class labels")
    train.add_argument("--create", help="create the model first, from layer sizes such as 4,16,3")
    train.add_argument("--activations", help="with --create: one activation per layer, comma separated")
    train.add_argument("--seed", type=int, default=None, help="with --create: seed of the weights and of training")
    train.add_argument("--epochs", type=int, default=10, help="epochs to train (default 10)")
    train.add_argument("--batch-size", type=int, default=32, help="samples per gradient step (default 32)")
    train.add_argument("--optimizer", default="adam", help="sgd, momentum, rmsprop, adam, ... (default adam)")
    train.add_argument("--learning-rate", type=float, help="step size (default: the optimizer's)")
    train.add_argument("--validation-split", type=float, help="fraction of the samples held out for validation metrics")
    train.add_argument("--watch", action="store_true", help="show a progress bar until the job ends")
    train.set_defaults(run=cmd_train)

    status = commands.add_parser("status", help="a job on one screen: state, epoch, loss, accuracy, ETA")
    status.add_argument("job_id", help="the id `train` printed")
    status.add_argument("--watch", action="store_true", help="show a progress bar until the job ends, then the summary")
    status.add_argument("--history", action="store_true", help="also print every epoch's loss, accuracy, validation metrics and learning rate")
    status.add_argument("--json", action="store_true", help="print the job's full JSON record instead")
    status.set_defaults(run=cmd_status)

    jobs = commands.add_parser("jobs", help="jobs of every model, newest first: id, model, kind, status, progress, created")
    jobs.add_argument("--model", help="only the jobs of this model id")
    jobs.add_argument("--status", choices=JOB_STATUSES, help="only jobs in this status")
    jobs.add_argument("--kind", choices=("training", "search"), help="only training or search jobs")
    jobs.add_argument("--limit", type=_positive, default=20, help="list at most this many, the newest (default 20)")
    jobs.set_defaults(run=cmd_jobs)

    cancel = commands.add_parser("cancel", help="cancel a waiting or running job (exit status 1 if it already ended)")
    cancel.add_argument("job_id", help="the id `train` printed (`jobs` lists them)")
    cancel.set_defaults(run=cmd_cancel)

    predict = commands.add_parser("predict", help="outputs (and class predictions) as CSV")
    predict.add_argument("--model", required=True, help="model id")
    predict.add_argument("--data", required=True, help="CSV or .npz of inputs only")
    predict.set_defaults(run=cmd_predict)

    export = commands.add_parser("export", help="download the model as .npz or ONNX")
    export.add_argument("--model", required=True, help="model id")
    export.add_argument("--out", required=True, help="file to write")
    export.add_argument("--format", choices=["npz", "onnx"], default="npz", help="npz (the core's file) or onnx (default npz)")
    export.set_defaults(run=cmd_export)

    whoami = commands.add_parser("whoami", help="the API key's name, scope and tenancy, and what it may not call")
    whoami.add_argument("--json", action="store_true", help="print the service's JSON answer instead")
    whoami.set_defaults(run=cmd_whoami)
    return parser


def unreachable(url, error):
    """One line for a service the client cannot talk to (no traceback): what failed and what to check."""
    if isinstance(error, httpx.UnsupportedProtocol):
        return f"--url {url!r} has no http:// or https://; give it as http://{url} (--url / NN_URL)"
    if isinstance(error, httpx.InvalidURL):
        return f"--url {url!r} is not a URL ({error}); give it as http://HOST:PORT (--url / NN_URL)"
    reason = re.sub(r"^\[Errno -?\d+\] ", "", str(error)).strip().lower() or type(error).__name__
    return f"cannot reach {url} ({reason}); is the service running? (--url / NN_URL)"


class _Client(Client):
    """The Client, whose ApiErrors carry the request that got them (`error.request`: method and path), so that
    main() answers with what to do on this command line rather than with the API's hint."""

    def request(self, method, path, **kwargs):
        try:
            return super().request(method, path, **kwargs)
        except ApiError as error:
            error.request = (method, path)
            raise


def _no_model(args, model):
    sizes = getattr(args, "fitting_sizes", None)
    if args.command == "train" and not args.create and sizes:
        return (f"model {model!r} does not exist; to create it, add --create {','.join(map(str, sizes))} (layer sizes: "
                f"this file's {_count(sizes[0], 'input')}, a hidden layer of {sizes[1]}, {_count(sizes[2], 'output')})")
    if args.command in ("predict", "export"):
        return (f"model {model!r} does not exist; `nn train --model {model} --data FILE --create SIZES` creates and "
                "trains it")
    return None


def _count(n, thing):
    return f"{n} {thing}{'' if n == 1 else 's'}"


def _no_job(args, job):
    return f"job {job!r} does not exist; `nn jobs` lists the jobs, newest first (--model M for one model's)"


def _model_exists(args):
    if args.command == "train" and args.create:
        return (f"model {args.model!r} already exists; leave out --create (and --activations, --seed) to train it "
                "further, or choose another --model")
    return None


# (status, method, route) -> the hint this command line gives, or None for the service's own message
HINTS = [
    (404, "POST", r"/models/([^/]+)/training-jobs", _no_model),
    (404, "POST", r"/models/([^/]+)/output", _no_model),
    (404, "GET", r"/models/([^/]+)/export", _no_model),
    (409, "POST", r"/models", _model_exists),
    (404, "GET", r"/jobs/([^/]+)", _no_job),
    (404, "POST", r"/jobs/([^/]+)/cancel", _no_job),
]


def hint(error, args):
    """What to do about an API error on this command line, from its status and route; None to show the service's."""
    method, path = getattr(error, "request", (None, ""))
    for status, verb, route, answer in HINTS:
        match = re.fullmatch(route, path)
        if error.status_code == status and method == verb and match:
            return answer(args, *map(unquote, match.groups()))
    return None


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        with _Client(args.url, api_key=args.api_key) as api:
            code = args.run(api, args)
            sys.stdout.flush()  # a reader that went away shows here, inside the try, not at interpreter exit
            return code
    except BrokenPipeError:
        # `nn predict ... | head`: the reader has what it wanted; stop quietly, as cat and grep do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (httpx.TransportError, httpx.InvalidURL) as error:  # refused, no such host, timed out, no scheme
        print(f"error: {unreachable(args.url, error)}", file=sys.stderr)
        return 1
    except ApiError as error:
        told = hint(error, args)  # the service's status stays: scripts and logs grep for it
        print(f"error: {f'HTTP {error.status_code}: {told}' if told else error}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130

if __name__ == "__main__":
    sys.exit(main())
