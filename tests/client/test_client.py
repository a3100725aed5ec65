"""The Python client and its command line against a real uvicorn server."""
import io
import json
import subprocess
import sys
import time

import numpy as np
import pytest
from sklearn.datasets import make_moons

from client import ApiError, Client
from client.api import ProgressBar
from client.__main__ import load_data
from tests.conftest import ROOT
from tests.servers import start_server, stop_server


def screen(text):
    """What a terminal shows after `text`: each line as its last carriage-return redraw left it."""
    return [line.split("\r")[-1].rstrip() for line in text.split("\n") if line.split("\r")[-1].strip()]


@pytest.fixture(scope="module")
def moons():
    x, y = make_moons(200, noise=0.1, random_state=0)
    return x, y


def test_train_and_wait_with_progress_bar(server, moons):
    x, y = moons
    with Client(server) as api:
        api.create_model([2, 16, 1], activations=["relu", "sigmoid"], model_id="client-moons", seed=0)
        assert api.add_samples("client-moons", x[:100], y[:100]) == 100
        # long enough (about a second) for several progress events to reach the bar
        job = api.train("client-moons", inputs=x[100:], targets=y[100:], epochs=200, batch_size=4, learning_rate=0.01)
        out = io.StringIO()
        final = job.wait(progress=True, timeout=60, out=out)
        assert final["status"] == "succeeded" and len(final["history"]) == 200
        bar, summary = screen(out.getvalue())
        # the bar ends at the job's end, whichever progress event the stream delivered last
        assert bar.startswith("[" + "#" * 30 + "] 100.0% epoch 200/200") and bar.endswith(" succeeded")
        assert summary.startswith(f"job {job.job_id} succeeded after 200 epochs")
        result = api.output("client-moons", x[:4])
        assert len(result["outputs"]) == 4 and len(result["predictions"]) == 4
        assert api.evaluate("client-moons", x, y)["metrics"]["accuracy"] > 0.8


def test_the_bar_of_a_job_that_ended_before_the_wait_shows_its_end(server, moons):
    """No progress event reaches the bar (the stream's first event is 'end', the first poll finds it ended): the bar
    is drawn from the final record."""
    x, y = moons
    with Client(server) as api:
        api.create_model([2, 8, 1], activations=["tanh", "sigmoid"], model_id="client-ended")
        for stream in (True, False):
            job = api.train("client-ended", inputs=x, targets=y, epochs=3, batch_size=50)
            api.job(job.job_id).wait(timeout=60)  # `job` still holds its record from before it ran
            out = io.StringIO()
            assert job.wait(progress=True, timeout=60, stream=stream, poll_interval=0.05, out=out)["status"] == "succeeded"
            bar, summary = screen(out.getvalue())
            assert " 100.0% epoch 3/3 " in bar and bar.endswith(" succeeded") and "succeeded after 3 epochs" in summary


def test_the_bar_of_a_cancelled_job_shows_the_epochs_it_completed(server, moons):
    x, y = moons
    with Client(server) as api:
        api.create_model([2, 8, 1], activations=["tanh", "sigmoid"], model_id="client-cancel")
        job = api.train("client-cancel", inputs=x, targets=y, epochs=10_000, batch_size=50)
        deadline = time.monotonic() + 60
        while not (job.status == "running" and job.epochs_completed >= 2):
            assert time.monotonic() < deadline, job.record
            time.sleep(0.02)
            job.refresh()
        job.cancel()
        out = io.StringIO()
        final = job.wait(progress=True, timeout=60, out=out)
        done = final["epochs_completed"]
        assert final["status"] == "cancelled" and done >= 2
        bar, summary = screen(out.getvalue())
        percent = 100.0 * done / 10_000
        assert bar.endswith(f" {percent:5.1f}% epoch {done}/10000 cancelled"), bar
        assert summary.startswith(f"job {job.job_id} cancelled after {done} epochs")


def test_the_bar_redraws_the_final_record_over_the_last_event():
    out = io.StringIO()
    bar = ProgressBar(out, width=10)
    bar.update("running", {"epoch": 6, "epochs": 10, "percent": 56.0, "loss": 0.5, "eta_seconds": 3.0})
    bar.finish({"job_id": "j", "status": "succeeded", "epochs_completed": 10,
                "history": [{"epoch": e, "loss": 0.25} for e in range(1, 11)],
                "progress": {"epoch": 10, "epochs": 10, "percent": 100.0, "loss": 0.25, "eta_seconds": 0.0}})
    assert screen(out.getvalue()) == ["[##########] 100.0% epoch 10/10 loss 0.2500 succeeded",
                                      "job j succeeded after 10 epochs, loss 0.2500"]
    out = io.StringIO()
    bar = ProgressBar(out, width=10)
    bar.update("running", {"epoch": 6, "epochs": 10, "percent": 56.0, "loss": 0.5, "eta_seconds": 3.0})
    bar.finish({"job_id": "j", "status": "failed", "epochs_completed": 5, "error": "diverged at epoch 6",
                "history": [{"epoch": e, "loss": 0.1 * e} for e in range(1, 6)],
                "progress": {"epoch": 6, "epochs": 10, "percent": 56.0, "loss": 0.5, "eta_seconds": 3.0}})
    assert screen(out.getvalue()) == ["[#####-----]  50.0% epoch 5/10 failed",
                                      "job j failed after 5 epochs, loss 0.5000: diverged at epoch 6"]


class AddsSamplesOnFirstDraw(io.StringIO):
    """The bar's `out`: its first line is drawn while the search waits in 'buffering' for samples; only then
    are they added, so that line is known whatever the timing, and the search goes on to run its trials."""

    def __init__(self, api, model_id, x, y):
        super().__init__()
        self.add = lambda: api.add_samples(model_id, x, y)

    def write(self, text):
        if not self.getvalue():
            self.add()
        return super().write(text)


@pytest.mark.parametrize("stream", [True, False])
def test_the_bar_of_a_search_shows_its_trials_and_best_score(server, moons, stream):
    x, y = moons
    model_id = f"client-search-{stream}"
    with Client(server) as api:
        api.create_model([2, 8, 1], activations=["relu", "sigmoid"], model_id=model_id, seed=0)
        job = api.search(model_id, {"hidden_sizes": [[4], [8]], "learning_rate": [0.01, 0.05]}, folds=2,
                         metric="accuracy", epochs=5, min_samples=len(x))
        assert repr(job) == f"Job(job_id={job.job_id!r}, model_id={model_id!r}, status='buffering', trials=0/4)"
        out = AddsSamplesOnFirstDraw(api, model_id, x, y)
        final = job.wait(progress=True, timeout=120, stream=stream, poll_interval=0.05, out=out)
        assert final["status"] == "succeeded" and final["search"]["trials_done"] == 4
        text = out.getvalue()
        assert "None" not in text and "epoch" not in text, text
        assert text.split("\r")[1].rstrip() == f"[{'-' * 30}]   0.0% trials 0/4 buffering"
        best = final["search"]["best"]
        bar, summary = screen(text)
        assert bar == f"[{'#' * 30}] 100.0% trials 4/4 best accuracy {best['score']:.4g} succeeded"
        assert summary == f"job {job.job_id} succeeded: 4 of 4 trials, best accuracy {best['score']:.4g} (trial {best['index']})"
        assert repr(job) == f"Job(job_id={job.job_id!r}, model_id={model_id!r}, status='succeeded', trials=4/4)"


def test_the_bar_of_a_search_that_applies_its_best_ends_on_the_trials_and_the_epochs_applied(server, moons):
    x, y = moons
    with Client(server) as api:
        api.create_model([2, 8, 1], activations=["relu", "sigmoid"], model_id="client-apply", seed=0)
        job = api.search("client-apply", {"hidden_sizes": [[4], [8]]}, inputs=x, targets=y, folds=2, metric="loss",
                         epochs=20, apply_best=True)
        out = io.StringIO()
        final = job.wait(progress=True, timeout=120, out=out)
        assert final["status"] == "succeeded" and final["stage"] == "apply" and len(final["history"]) == 20
        best, loss = final["search"]["best"], final["history"][-1]["loss"]
        assert "None" not in out.getvalue()
        bar, summary = screen(out.getvalue())
        assert bar == f"[{'#' * 30}] 100.0% trials 2/2 best loss {best['score']:.4g} succeeded"
        assert summary == (f"job {job.job_id} succeeded: 2 of 2 trials, best loss {best['score']:.4g} "
                           f"(trial {best['index']}); applied: 20 epochs, loss {loss:.4f}")


def test_the_bar_draws_each_progress_shape_without_none():
    """A search's trials stage (buffering, trials running, the best so far), its apply stage, and a cancelled
    search, which shows the trials that ran, not the ones cancelled."""
    out = io.StringIO()
    bar = ProgressBar(out, width=10, kind="search")
    trials = {"epoch": None, "epochs": None, "loss": None, "eta_seconds": None, "trials_total": 16, "metric": "accuracy"}
    lines = []
    for status, progress in [
            ("buffering", {**trials, "percent": 0.0, "trials_done": 0, "trials_running": 0, "best": None}),
            ("running", {**trials, "percent": 18.75, "trials_done": 3, "trials_running": 2,
                         "best": {"index": 1, "score": 0.97, "params": {}}}),
            ("running", {"epoch": 3, "epochs": 10, "percent": 25.0, "loss": 0.5, "eta_seconds": 2.0})]:
        bar.update(status, progress)
        lines.append(bar.last)
    assert lines == ["[----------]   0.0% trials 0/16 buffering",
                     "[#---------]  18.8% trials 3/16 (2 running) best accuracy 0.97",
                     "[##--------]  25.0% apply best, epoch 3/10 loss 0.5000 ETA 2s"]
    out = io.StringIO()
    bar = ProgressBar(out, width=10, kind="search")
    ran = [{"index": i, "status": "succeeded" if i < 3 else "failed" if i < 4 else "cancelled"} for i in range(8)]
    bar.finish({"job_id": "s", "status": "cancelled", "history": [], "error": None,
                "progress": {**trials, "percent": 100.0, "trials_done": 8, "trials_running": 0, "best": None},
                "search": {"metric": "f1", "trials_total": 8, "trials_done": 8, "trials": ran,
                           "best": {"index": 2, "score": 0.875}}})
    assert screen(out.getvalue()) == ["[#####-----]  50.0% trials 4/8 best f1 0.875 cancelled",
                                      "job s cancelled: 4 of 8 trials, best f1 0.875 (trial 2)"]


def test_wait_by_polling_and_cancel(server, moons):
    x, y = moons
    with Client(server) as api:
        api.create_model([2, 8, 1], activations=["tanh", "sigmoid"], model_id="client-poll")
        job = api.train("client-poll", inputs=x, targets=y, epochs=3, batch_size=50)
        assert job.wait(stream=False, timeout=60, poll_interval=0.05)["status"] == "succeeded"
        waiting = api.train("client-poll", epochs=1, min_samples=10_000)
        assert waiting.status == "buffering"
        assert waiting.cancel()["status"] == "cancelled"


def test_ids_are_one_path_segment_so_no_id_reaches_another_resource(server):
    """delete_model("x/../../models/victim") deleted `victim`; get_model("../jobs") returned the jobs list."""
    with Client(server) as api:
        api.create_model([2, 1], model_id="victim")
        api.add_samples("victim", [[1, 2]], [0])
        for call, value in ((api.get_model, "victim?x=1"), (api.get_model, "victim#x"), (api.get_model, "50%")):
            with pytest.raises(ApiError) as info:
                call(value)
            assert info.value.status_code == 404, (value, info.value)
        # the server decodes %2F before routing, and clients drop dot segments: such ids are refused here
        for call, value in ((api.delete_model, "x/../../models/victim"), (api.get_model, "../jobs"),
                            (api.delete_model, "victim/samples"), (api.get_model, "."), (api.job, ".."), (api.job, "")):
            with pytest.raises(ValueError, match="is not an id"):  # "" was GET /jobs/, a 307 read as success
                call(value)
        assert api.get_model("victim")["model_id"] == "victim" and api.buffer_size("victim") == 1


def test_numpy_values_anywhere_in_a_body_are_sent_as_numbers_and_nan_is_named(server, moons):
    """np.int64 epochs or a layer_sizes array raised "Object of type int64 is not JSON serializable"."""
    x, y = moons
    with Client(server) as api:
        api.create_model(np.array([2, 4, 1]), activations=["tanh", "sigmoid"], model_id="np-values")
        job = api.train("np-values", inputs=x, targets=y, epochs=np.int64(1), learning_rate=np.float32(0.01))
        assert job.wait(timeout=60)["status"] == "succeeded"
        with pytest.raises(ValueError, match="NaN or Infinity, which JSON cannot hold"):
            api.train("np-values", inputs=x, targets=y, learning_rate=float("nan"))


def test_wait_follows_a_job_across_a_restart_of_the_service(tmp_path, moons):
    """The server ends its event streams as it stops ('shutdown'); wait() then polls, and retries while the
    service restarts, where it gave up at the first refused connection."""
    import threading

    x, y = moons
    url, process = start_server(tmp_path, NN_WORKERS="0")  # the job stays queued until a server with a worker
    port = url.rsplit(":", 1)[1]
    with Client(url) as api:
        api.create_model([2, 4, 1], activations=["tanh", "sigmoid"], model_id="restarted")
        job = api.train("restarted", inputs=x, targets=y, epochs=2)
        result, out = {}, io.StringIO()
        waiting = threading.Thread(target=lambda: result.update(job.wait(progress=True, out=out, reconnect_for=120)))
        waiting.start()
        stop_server(process)
        _, process = start_server(tmp_path, port=int(port))  # the same port and data: the job resumes there
        try:
            waiting.join(120)
            assert result.get("status") == "succeeded", (result, out.getvalue())
        finally:
            stop_server(process)


def test_errors_carry_the_services_detail(server):
    with Client(server) as api:
        with pytest.raises(ApiError) as info:
            api.get_model("no-such-model")
        assert info.value.status_code == 404 and "no-such-model" in str(info.value.detail)


def test_export_npz(server, tmp_path):
    with Client(server) as api:
        api.create_model([3, 4, 2], activations=["relu", "softmax"], model_id="client-export")
        data = api.export("client-export", tmp_path / "m.npz")
        assert (tmp_path / "m.npz").read_bytes() == data and data[:2] == b"PK"



def test_datasets_upload_from_a_path_without_extension_and_download(server, moons, tmp_path):
    """The format comes from the path's extension, else from the first bytes (a path with no extension, or bytes):
    before, `irisdata` was sent as ?format=irisdata and refused with 422."""
    x, y = moons
    buffer = io.BytesIO()
    np.savez(buffer, inputs=x.astype(np.float32), targets=y)
    csv = "a,b,label\n" + "".join(f"{a},{b},{t}\n" for (a, b), t in zip(x, y))
    (tmp_path / "npzdata").write_bytes(buffer.getvalue())
    (tmp_path / "csvdata").write_text(csv)
    with Client(server) as api:
        npz = api.upload_dataset(tmp_path / "npzdata")
        from_csv = api.upload_dataset(tmp_path / "csvdata")
        from_bytes = api.upload_dataset(json.dumps({"inputs": x[:5].tolist(), "targets": y[:5].tolist()}).encode())
        assert (npz["format"], from_csv["format"], from_bytes["format"]) == ("npz", "csv", "json")
        assert npz["n_samples"] == from_csv["n_samples"] == 200 and from_bytes["n_samples"] == 5
        path = api.download_dataset(npz["dataset_id"], tmp_path / "copy.npz")
        with np.load(path) as copy:
            np.testing.assert_array_equal(copy["inputs"], x.astype(np.float32))
        assert api.download_dataset(from_bytes["dataset_id"])[:2] == b"PK"
        with pytest.raises(ApiError) as info:
            api.download_dataset("no-such-dataset", tmp_path / "never.npz")
        assert info.value.status_code == 404 and "no-such-dataset" in info.value.detail
        assert not (tmp_path / "never.npz").exists()
        # NPZ bytes were written into copy.csv silently
        for wrong in (str(tmp_path / "copy.csv"), tmp_path / "copy.CSV", tmp_path / "data.json"):
            with pytest.raises(ValueError, match=r"download_dataset writes NPZ .* give a path ending in \.npz"):
                api.download_dataset(npz["dataset_id"], wrong)
        assert not (tmp_path / "copy.CSV").exists()
        assert api.download_dataset(npz["dataset_id"], tmp_path / "no-extension") == tmp_path / "no-extension"

def test_command_line_end_to_end_on_a_small_csv(server, moons, tmp_path):
    x, y = moons
    data = tmp_path / "train.csv"
    np.savetxt(data, np.c_[x, y], delimiter=",", header="a,b,label", comments="")
    inputs = tmp_path / "inputs.csv"
    np.savetxt(inputs, x[:3], delimiter=",")

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "client", "--url", server, *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    trained = cli("train", "--model", "cli-moons", "--data", str(data), "--create", "2,16,1",
                  "--activations", "relu,sigmoid", "--epochs", "5", "--watch")
    assert trained.returncode == 0, trained.stderr
    job_id = trained.stdout.strip()
    assert "succeeded" in trained.stderr
    status = cli("status", job_id, "--json")
    assert status.returncode == 0 and '"status": "succeeded"' in status.stdout
    predicted = cli("predict", "--model", "cli-moons", "--data", str(inputs))
    assert predicted.returncode == 0 and len(predicted.stdout.strip().splitlines()) == 3
    missing = cli("status", "nope")
    assert missing.returncode == 2 and "404" in missing.stderr


def test_load_data_reads_csv_headers_and_npz(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((2, 3)), y=np.zeros(2))
    x, y = load_data(str(tmp_path / "d.npz"))
    assert x.shape == (2, 3) and y.shape == (2,)
    (tmp_path / "d.csv").write_text("a,b,t1,t2\n1,2,3,4\n5,6,7,8\n")
    x, y = load_data(str(tmp_path / "d.csv"), n_targets=2)
    assert x.tolist() == [[1, 2], [5, 6]] and y.tolist() == [[3, 4], [7, 8]]


def test_objects_read_like_their_json(server, moons):
    x, y = moons
    with Client(server) as api:
        assert repr(api) == f"Client(base_url={server!r})"
        api.create_model(input_size=2, layers=[{"type": "dense", "units": 4, "activation": "tanh", "use_bias": False},
                                               {"type": "batch_norm"}, {"type": "dense", "units": 1, "activation": "sigmoid"}],
                         model_id="client-repr", seed=0)
        job = api.train("client-repr", inputs=x, targets=y, epochs=2, batch_size=50)
        assert job.job_id == job.record["job_id"] == job.id and job.model_id == "client-repr"
        job.wait(stream=False, timeout=60, poll_interval=0.05)
        assert (job.status, len(job.history), job.error) == ("succeeded", 2, None)
        loss = job.history[-1]["loss"]
        assert repr(job) == f"Job(job_id={job.job_id!r}, model_id='client-repr', status='succeeded', epoch=2/2, loss={loss:.4g})"
        assert "job_id" in dir(job)
        with pytest.raises(AttributeError, match="its fields are: job_id"):
            job.jobid
        with pytest.raises(ApiError) as info:
            api.get_model("nope")
        assert repr(info.value).startswith("ApiError(status_code=404, detail=\"model 'nope' does not exist")


# -- who am I ---------------------------------------------------------------------------------------------
KEYS = "alice:alice-read-key:read,bob:bob-train-key:train,root:root-admin-key:admin"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    """A real server with scoped keys and tenancy, no workers."""
    url, process = start_server(tmp_path_factory.mktemp("keys"), NN_API_KEYS=KEYS, NN_TENANCY="true", NN_WORKERS="0")
    yield url
    stop_server(process)


def cli(url, *args):
    return subprocess.run([sys.executable, "-m", "client", "--url", url, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_whoami_is_the_services_answer_for_the_key(keyed_server):
    for key, name, scope in [("alice-read-key", "alice", "read"), ("bob-train-key", "bob", "train"),
                             ("root-admin-key", "root", "admin")]:
        with Client(keyed_server, api_key=key) as api:
            me = api.whoami()
            assert me == api.http.get("/auth/whoami").json()
            assert (me["name"], me["scope"], me["tenancy"], me["keys_required"]) == (name, scope, True, True)
            assert me["denied"].get("POST /models") == (None if scope != "read" else "train")
            assert me["denied"].get("DELETE /models/{model_id}") == (None if scope == "admin" else "admin")
    with Client(keyed_server) as api, pytest.raises(ApiError) as info:
        api.whoami()
    assert info.value.status_code == 401


def test_whoami_without_keys_is_full_access(server):
    with Client(server) as api:
        assert api.whoami() == {"name": None, "scope": "admin", "tenancy": False, "keys_required": False, "denied": {}}
    done = cli(server, "whoami")
    assert done.returncode == 0 and done.stdout == "the service has no API keys: full access (scope admin), every model and job\n"


def test_nn_whoami_lists_what_the_key_may_not_call_by_scope(keyed_server):
    done = cli(keyed_server, "--api-key", "alice-read-key", "whoami")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    with Client(keyed_server, api_key="alice-read-key") as api:
        denied = api.whoami()["denied"]
    assert lines[:2] == ["key alice: scope read, tenancy on, sees only alice's models and jobs",
                         f"may not call these {len(denied)} operations (the scope each needs):"]
    rows = [line.split() for line in lines[2:]]
    assert {f"{method} {path}": scope for scope, method, path in rows} == denied
    assert [scope for scope, _, _ in rows] == sorted((scope for scope, _, _ in rows), key=["train", "admin"].index)
    assert "  train  POST    /models" in lines
    admin = cli(keyed_server, "--api-key", "root-admin-key", "whoami")
    assert admin.stdout.splitlines() == ["key root: scope admin, tenancy on, sees every model and job", "may call every operation"]
    raw = cli(keyed_server, "--api-key", "bob-train-key", "whoami", "--json")
    assert raw.returncode == 0 and json.loads(raw.stdout)["name"] == "bob"
    refused = cli(keyed_server, "--api-key", "not-a-key", "whoami")
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and refused.stdout == ""
