"""`Client` (one method per route) and `Job` (refresh, cancel, wait with a progress bar)."""
import json
import os
import sys
import time

from urllib.parse import quote

import httpx

TERMINAL = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    """The service answered with an error status; `status_code` and `detail` say what and why."""

    def __init__(self, status_code, detail):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail

    def __repr__(self):
        return f"ApiError(status_code={self.status_code}, detail={self.detail!r})"


def _checked(response):
    """`response`, or ApiError with the service's message for an error status (a redirect too: the client follows
    none, so a 3xx means the path was not one of the service's)."""
    if 300 <= response.status_code < 400:
        raise ApiError(response.status_code, f"redirected to {response.headers.get('location')!r}: not a route of "
                                             "the service; check the id")
    if response.status_code >= 400:
        response.read()
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise ApiError(response.status_code, detail)
    return response


def _sniff(head):
    """The dataset format of a file from its first bytes: NPZ is a zip archive, JSON an object, else CSV."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # not b"PK" alone: a CSV header may begin "PK_id,..."
        return "npz"
    return "json" if head.lstrip()[:1] == b"{" else "csv"


def _id(value):
    """An id as one path segment: percent-encoded, so "m?x=1" names no other resource. An id holding a slash, or
    "." or "..", is refused: servers decode %2F before routing ("m/samples" would reach /models/m/samples) and
    clients drop dot segments, while no id the service gives holds them (letters, digits, _ . -)."""
    text = str(value)
    if not text or "/" in text or "\\" in text or text in (".", ".."):
        raise ValueError(f"{text!r} is not an id: give the id of a model, job or dataset (letters, digits, _ . -)")
    return quote(text, safe="")


def _plain(value):
    """What json.dumps cannot write itself: NumPy arrays and scalars (np.int64(3), np.float32(0.1)) as Python values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON: send numbers, strings, lists and dicts")


def _dumps(body):
    try:
        return json.dumps(body, default=_plain, allow_nan=False).encode()
    except ValueError:  # NaN or Infinity, which JSON cannot hold
        raise ValueError("the request holds NaN or Infinity, which JSON cannot hold: send finite numbers (drop or "
                         "fill missing values)") from None


def _listify(values):
    """NumPy arrays (or anything with tolist) to JSON lists; None stays None."""
    return values.tolist() if hasattr(values, "tolist") else values


class Client:
    def __init__(self, base_url="http://127.0.0.1:8000", api_key=None, timeout=30.0, transport=None):
        if api_key and not (api_key.isascii() and api_key.isprintable() and " " not in api_key):
            raise ValueError("the API key holds a space, a control character or a non-ASCII one, which an HTTP "
                             "header cannot carry: give the key as it was issued (--api-key / NN_API_KEY)")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self):
        self.http.close()

    def __repr__(self):
        return f"Client(base_url={str(self.http.base_url).rstrip('/')!r})"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, method, path, **kwargs):
        if "json" in kwargs:  # NumPy values anywhere in the body, NaN refused with a message that says so
            kwargs["content"] = _dumps(kwargs.pop("json"))
            kwargs["headers"] = {"Content-Type": "application/json", **kwargs.get("headers", {})}
        return _checked(self.http.request(method, path, **kwargs))

    def _json(self, method, path, **kwargs):
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def health(self):
        return self._json("GET", "/health")

    def whoami(self):
        """The API key's name, scope and tenancy, and the operations its scope may not call, as GET /auth/whoami
        answers: {"name": "alice", "scope": "read", "tenancy": True, "keys_required": True, "denied":
        {"POST /models": "train", ...}}; without keys on the service, full access (scope "admin", nothing denied)."""
        return self._json("GET", "/auth/whoami")

    # models
    def create_model(self, layer_sizes=None, activations=None, model_id=None, **options):
        """From layer sizes ([4, 8, 3]) and activations, or from `input_size=` and `layers=[{"type": "dense",
        "units": 8, ...}, {"type": "batch_norm"}, ...]`; other options as in POST /models."""
        body = dict(options)
        if layer_sizes is not None:
            body["layer_sizes"] = list(layer_sizes)
        if activations is not None:
            body["activations"] = list(activations)
        if model_id is not None:
            body["model_id"] = model_id
        return self._json("POST", "/models", json=body)

    def get_model(self, model_id):
        return self._json("GET", f"/models/{_id(model_id)}")

    def list_models(self, offset=0, limit=100):
        return self._json("GET", "/models", params={"offset": offset, "limit": limit})

    def delete_model(self, model_id):
        self.request("DELETE", f"/models/{_id(model_id)}")

    def output(self, model_id, inputs, targets=None, include_gradients=False, include_activations=False):
        body = {"inputs": _listify(inputs)}
        if targets is not None:
            body["targets"] = _listify(targets)
        if include_gradients:
            body["include_gradients"] = True
        if include_activations:
            body["include_activations"] = True
        return self._json("POST", f"/models/{_id(model_id)}/output", json=body)

    def evaluate(self, model_id, inputs=None, targets=None, dataset=None):
        """Loss and metrics on inline samples, or on an uploaded dataset (its id)."""
        body = {"dataset": dataset} if dataset is not None else {"inputs": _listify(inputs), "targets": _listify(targets)}
        return self._json("POST", f"/models/{_id(model_id)}/evaluate", json=body)

    def get_weights(self, model_id):
        return self._json("GET", f"/models/{_id(model_id)}/weights")

    def set_weights(self, model_id, layers):
        layers = [{key: _listify(value) for key, value in layer.items()} for layer in layers]
        return self._json("PUT", f"/models/{_id(model_id)}/weights", json={"layers": layers})

    def export(self, model_id, path=None, format="npz"):
        """The model as .npz (or ONNX with format="onnx") bytes; written to `path` when given."""
        data = self.request("GET", f"/models/{_id(model_id)}/export", params={"format": format}).content
        if path is not None:
            with open(path, "wb") as handle:
                handle.write(data)
        return data

    def import_model(self, data, model_id=None):
        params = {"model_id": model_id} if model_id else {}
        return self._json("POST", "/models/import", content=data, params=params,
                          headers={"Content-Type": "application/octet-stream"})

    # datasets
    def upload_dataset(self, data, format=None, target=None, name=None, dataset_id=None):
        """Upload a dataset: `data` is the bytes of an .npz, .csv or .json file, or a path to one (streamed, never
        read whole), or a pair (inputs, targets) of arrays (sent as NPZ). The format is `format`, else the path's
        extension, else what the first bytes say (NPZ is a zip, JSON starts with "{", anything else is CSV).
        Returns the dataset's record (dataset_id, n_samples, ...)."""
        params = {"target": target, "name": name, "dataset_id": dataset_id}
        if isinstance(data, tuple):
            import io

            import numpy as np

            buffer = io.BytesIO()
            np.savez(buffer, inputs=np.asarray(data[0]), targets=np.asarray(data[1]))
            return self._upload(buffer.getvalue(), "npz", params)
        if isinstance(data, (bytes, bytearray)):
            return self._upload(data, format or _sniff(data[:64]), params)
        path = str(data)
        extension = path.rsplit(".", 1)[-1].lower() if "." in os.path.basename(path) else ""
        with open(path, "rb") as handle:
            if format is None:
                format = extension if extension in ("npz", "csv", "json") else _sniff(handle.read(64))
                handle.seek(0)
            return self._upload(handle, format, params)

    def _upload(self, content, format, params):
        params = {k: v for k, v in {"format": format, **params}.items() if v is not None}
        return self._json("POST", "/datasets", content=content, params=params,
                          headers={"Content-Type": "application/octet-stream"})

    def download_dataset(self, dataset_id, path=None):
        """The dataset as NPZ bytes (arrays inputs and targets), or streamed to `path` when given (returns the path);
        a `path` ending in another extension than .npz (such as .csv) is a ValueError, as NPZ is what it would hold."""
        extension = os.path.splitext(os.fspath(path))[1] if path is not None else ""
        if extension and extension.lower() != ".npz":
            raise ValueError(f"download_dataset writes NPZ (arrays inputs and targets), not {extension}: give a path "
                             f"ending in .npz, not {os.fspath(path)!r}")
        if path is None:
            return self.request("GET", f"/datasets/{_id(dataset_id)}/download").content
        with self.http.stream("GET", f"/datasets/{_id(dataset_id)}/download") as response:
            _checked(response)
            with open(path, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        return path

    def get_dataset(self, dataset_id):
        return self._json("GET", f"/datasets/{_id(dataset_id)}")

    def list_datasets(self, offset=0, limit=100):
        return self._json("GET", "/datasets", params={"offset": offset, "limit": limit})

    def delete_dataset(self, dataset_id):
        return self._json("DELETE", f"/datasets/{_id(dataset_id)}")

    # training buffer and jobs
    def add_samples(self, model_id, inputs, targets):
        """Append samples to the model's training buffer; returns the buffer size."""
        body = {"inputs": _listify(inputs), "targets": _listify(targets)}
        return self._json("POST", f"/models/{_id(model_id)}/samples", json=body)["buffer_size"]

    def buffer_size(self, model_id):
        return self._json("GET", f"/models/{_id(model_id)}/samples")["buffer_size"]

    def clear_samples(self, model_id):
        return self._json("DELETE", f"/models/{_id(model_id)}/samples")

    def train(self, model_id, inputs=None, targets=None, **hyper_parameters):
        """Submit a training job; returns a `Job`. Inline `inputs`/`targets` are the job's own samples (it trains on
        exactly those, never on the buffer, which stays as it was); without them it trains on the buffer.
        `hyper_parameters` are the body's fields as they are, e.g. `optimizer="nesterov",
        optimizer_options={"momentum": 0.8}, learning_rate=0.05`."""
        body = dict(hyper_parameters)
        if inputs is not None:
            body["inputs"], body["targets"] = _listify(inputs), _listify(targets)
        return Job(self, self._json("POST", f"/models/{_id(model_id)}/training-jobs", json=body))

    def search(self, model_id, space, inputs=None, targets=None, **options):
        """Submit a hyper-parameter search (`space`: {name: [values]}; folds, metric, trials, apply_best, ... as in
        POST /models/{model_id}/search-jobs) on inline samples, a dataset (`dataset=`) or the buffer; returns a `Job`."""
        body = {"space": space, **options}
        if inputs is not None:
            body["inputs"], body["targets"] = _listify(inputs), _listify(targets)
        return Job(self, self._json("POST", f"/models/{_id(model_id)}/search-jobs", json=body))

    def job(self, job_id):
        return Job(self, self._json("GET", f"/jobs/{_id(job_id)}"))

    def jobs(self, model_id):
        return self._json("GET", f"/models/{_id(model_id)}/jobs")


class Job:
    """A training or search job. `record` is its latest JSON record from the service, and every field
    of it reads as an attribute of the same name: `job.job_id`, `job.status`, `job.model_id`,
    `job.progress`, `job.history`, `job.metrics`, ... (as of the last refresh)."""

    def __init__(self, client, record):
        self.client, self.record = client, record

    def __getattr__(self, name):
        record = self.__dict__.get("record") or {}
        if name in record:
            return record[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}; its fields are: {', '.join(record)}")

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self.__dict__.get("record") or {}))

    @property
    def id(self):
        """The same as `job_id` (older name)."""
        return self.record["job_id"]

    def __repr__(self):
        r, p = self.record, self.record.get("progress") or {}
        parts = [f"job_id={r['job_id']!r}", f"model_id={r.get('model_id')!r}", f"status={r.get('status')!r}"]
        search = r.get("search")
        if search and search.get("trials_total"):  # a search, in its apply stage or ended too
            parts.append(f"trials={trials_ran(search)}/{search['trials_total']}")
        elif p.get("trials_total") is not None:
            parts.append(f"trials={p.get('trials_done')}/{p['trials_total']}")
        elif p.get("epoch") is not None:
            parts.append(f"epoch={p['epoch']}/{p.get('epochs')}")
        last = (r.get("history") or [{}])[-1]
        loss = last.get("loss", p.get("loss"))
        if loss is not None:
            parts.append(f"loss={loss:.4g}")
        return f"Job({', '.join(parts)})"

    def refresh(self):
        self.record = self.client._json("GET", f"/jobs/{_id(self.job_id)}")
        return self.record

    def cancel(self):
        self.record = self.client._json("POST", f"/jobs/{_id(self.job_id)}/cancel")
        return self.record

    def wait(self, progress=False, timeout=None, poll_interval=0.5, stream=True, out=None, reconnect_for=30.0):
        """Block until the job ends; returns its final record. With progress=True, draws a bar on `out`
        (stderr): epoch, loss and ETA of a training job, trials done and the best score of a search. Follows
        the SSE stream, falling back to polling (a stream the server ends as it stops, too); polls that cannot
        reach the service are retried for `reconnect_for` seconds (a restart), then raise."""
        bar = ProgressBar(out or sys.stderr, kind=self.record.get("kind", "training")) if progress else None
        deadline = None if timeout is None else time.monotonic() + timeout
        if stream:
            try:
                self._follow_stream(bar, deadline)
            except (httpx.HTTPError, ApiError, ValueError):
                pass  # fall back to polling below
        unreachable_since = None
        while self.status not in TERMINAL:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {self.job_id} still {self.status} after {timeout} s")
            time.sleep(poll_interval)
            try:
                self.refresh()
                unreachable_since = None
            except httpx.TransportError:
                unreachable_since = unreachable_since or time.monotonic()
                if time.monotonic() - unreachable_since > reconnect_for:
                    raise
                continue
            if bar:
                bar.update(self.status, self.record.get("progress"))
        if bar:
            bar.finish(self.record)
        return self.record

    def _follow_stream(self, bar, deadline):
        read_timeout = None if deadline is None else max(deadline - time.monotonic(), 0.1)
        timeout = httpx.Timeout(10.0, read=read_timeout)
        with self.client.http.stream("GET", f"/jobs/{_id(self.job_id)}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                raise ApiError(response.status_code, response.read().decode(errors="replace"))
            event = None
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "end":
                        self.record = data
                        return
                    if event != "progress":  # 'timeout' or 'shutdown': polling takes over
                        return
                    self.record = {**self.record, **{key: data[key] for key in ("status", "progress", "epochs_completed")
                                                     if key in data}}
                    if bar:
                        bar.update(data.get("status"), data.get("progress"))
                if deadline is not None and time.monotonic() > deadline:
                    return


def trials_ran(search):
    """Trials of a search record (its `search` field) that ran to an end, succeeded or failed (not cancelled)."""
    return sum(t["status"] in ("succeeded", "failed") for t in search["trials"])


class ProgressBar:
    """One line redrawn in place: [#####-----]  52.0% epoch 3/5 loss 0.1234 ETA 4s for a training job,
    [##--------]  25.0% trials 4/16 (2 running) best accuracy 0.97 for a search's trials (then its apply
    stage's epochs). `finish` redraws it from the job's final record, then writes a summary line below it."""

    def __init__(self, out, width=30, kind="training"):
        self.out, self.width, self.kind = out, width, kind
        self.last = ""

    def update(self, status, progress):
        line = self._line(status, progress)
        self._draw(line + (f" {status}" if progress and status not in ("running", None) else ""))

    def _line(self, status, progress):
        if not progress:
            return f"[{'-' * self.width}] {status}"
        percent = progress.get("percent") or 0.0
        filled = int(self.width * percent / 100)
        eta = progress.get("eta_seconds")
        return (f"[{'#' * filled}{'-' * (self.width - filled)}] {percent:5.1f}% " + self._where(progress)
                + (f" ETA {eta:.0f}s" if eta is not None else ""))

    def _where(self, progress):
        """Trials done and the best so far (a search's trials stage), else the epoch and its loss."""
        if progress.get("trials_total") is not None:
            running, best = progress.get("trials_running"), progress.get("best")
            return (f"trials {progress.get('trials_done') or 0}/{progress['trials_total']}"
                    + (f" ({running} running)" if running else "")
                    + (f" best {progress.get('metric')} {best['score']:.4g}" if best else ""))
        parts = ["apply best,"] if self.kind == "search" else []  # a search's apply stage trains its best trial
        if progress.get("epoch") is not None:
            parts.append(f"epoch {progress['epoch']}/{progress.get('epochs')}")
        if progress.get("loss") is not None:
            parts.append(f"loss {progress['loss']:.4f}")
        return " ".join(parts)

    def _draw(self, line):
        if line != self.last:
            self.out.write("\r" + line.ljust(len(self.last)))
            self.out.flush()
            self.last = line

    def finish(self, record):
        """The bar as the job ended, whatever progress event came last: a succeeded job at 100% (its final
        progress), a failed or cancelled one at the epochs it completed (the model keeps those), with its status.
        A search shows the trials that ran (succeeded or failed) and its best score, whichever stage it ended in."""
        status, progress, search = record["status"], record.get("progress"), record.get("search")
        if search:
            ran, total = trials_ran(search), search["trials_total"]
            progress = {"percent": 100.0 * ran / total if total else 0.0, "trials_done": ran, "trials_total": total,
                        "metric": search["metric"], "best": search.get("best")}
        elif progress:
            progress = {**progress, "eta_seconds": None}
            done = record.get("epochs_completed")
            if status != "succeeded" and progress.get("epochs") and done is not None:
                progress.update(epoch=done, percent=100.0 * done / progress["epochs"], loss=None)
        self._draw(self._line(status, progress) + (f" {status}" if progress else ""))
        self.out.write("\n" + self._summary(record) + "\n")
        self.out.flush()

    @staticmethod
    def _summary(record):
        history = record.get("history") or []
        last = history[-1] if history else {}
        summary = f"job {record['job_id']} {record['status']}"
        search = record.get("search")
        if search:
            summary += f": {trials_ran(search)} of {search['trials_total']} trials"
            best = search.get("best")
            if best:
                summary += f", best {search['metric']} {best['score']:.4g} (trial {best['index']})"
            if "loss" in last:
                summary += f"; applied: {len(history)} epochs, loss {last['loss']:.4f}"
        elif "loss" in last:
            summary += f" after {len(history)} epochs, loss {last['loss']:.4f}"
        if record.get("error"):
            summary += f": {record['error']}"
        return summary
