"""Training jobs over HTTP: every state, cancel, divergence, SSE, validation, one writer per model."""

import json
import time

import httpx
import numpy as np
import pytest

from tests.api.conftest import X4, Y3, create, wait_for, wait_job

rng = np.random.default_rng(0)
BLOBS_X = np.concatenate([rng.normal(c, 0.3, size=(32, 4)) for c in (0.0, 2.0)]).round(3).tolist()
BLOBS_Y = [0] * 32 + [1] * 32


def submit(client, model_id, **body):
    response = client.post(f"/models/{model_id}/training-jobs", json=body)
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/jobs/{job['job_id']}"
    return job


def long_job(client, model_id):
    """A job far longer than any test waits for: it is cancelled or interrupted."""
    return submit(client, model_id, inputs=BLOBS_X, targets=BLOBS_Y, epochs=10_000, batch_size=4, learning_rate=0.001)


def test_a_job_goes_from_buffering_to_succeeded(client):
    create(client, model_id="life")
    job = submit(client, "life", min_samples=10, epochs=20, batch_size=4, learning_rate=0.05)
    assert job["status"] == "buffering" and job["n_samples"] == 0 and job["progress"] is None
    client.post("/models/life/samples", json={"inputs": X4, "targets": Y3})
    assert client.get(f"/jobs/{job['job_id']}").json()["status"] == "buffering"  # 6 < 10
    client.post("/models/life/samples", json={"inputs": X4, "targets": Y3})
    done = wait_job(client, job["job_id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["n_samples"] == 12 and done["epochs_completed"] == 20
    assert [h["epoch"] for h in done["history"]] == list(range(1, 21))
    assert {"loss", "accuracy", "learning_rate", "time"} <= set(done["history"][-1])
    assert done["progress"]["percent"] == 100.0 and done["progress"]["epoch"] == 20
    assert done["started_at"] and done["finished_at"] and done["model_version"] == 2
    model = client.get("/models/life").json()
    assert (model["version"], model["epochs_trained"], model["buffer_size"]) == (2, 20, 0)  # samples consumed
    assert model["latest_job"] == {"job_id": job["job_id"], "status": "succeeded"}
    progress = client.get("/models/life/progress").json()
    assert progress["job_id"] == job["job_id"] and progress["progress"]["percent"] == 100.0
    listed = client.get("/models/life/jobs").json()
    assert listed["count"] == 1 and listed["data"][0]["job_id"] == job["job_id"]


def test_training_improves_the_model(client):
    create(client, model_id="learn", layer_sizes=[4, 8, 2], activations=["relu", "softmax"])
    before = client.post("/models/learn/evaluate", json={"inputs": BLOBS_X, "targets": BLOBS_Y}).json()["metrics"]
    job = submit(client, "learn", inputs=BLOBS_X, targets=BLOBS_Y, epochs=30, batch_size=8, learning_rate=0.05,
                 validation_split=0.25, schedule="exponential", decay_rate=0.95, l2=1e-4, seed=3)
    done = wait_job(client, job["job_id"])
    assert done["status"] == "succeeded", done["error"]
    assert "val_loss" in done["history"][-1] and done["history"][-1]["learning_rate"] < 0.05
    after = client.post("/models/learn/evaluate", json={"inputs": BLOBS_X, "targets": BLOBS_Y}).json()["metrics"]
    assert after["loss"] < before["loss"] and after["accuracy"] >= 0.9


def test_cancel_a_running_job_keeps_the_last_completed_epoch(client):
    create(client, model_id="stopme", layer_sizes=[4, 8, 2], activations=["relu", "softmax"])
    job = long_job(client, "stopme")
    wait_for(lambda: client.get(f"/jobs/{job['job_id']}").json(),
             lambda j: j["status"] == "running" and j["epochs_completed"] >= 2 and j["progress"] is not None)
    # while it trains, the service answers other requests at once
    assert client.post("/models/life/output", json={"input": X4[0]}).status_code == 200
    running = client.get("/models/stopme").json()
    assert running["version"] == 1 and running["latest_job"]["status"] == "running"
    assert client.put("/models/stopme/weights", json=client.get("/models/stopme/weights").json()).status_code == 409

    response = client.post(f"/jobs/{job['job_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] in ("cancelling", "cancelled")
    done = wait_job(client, job["job_id"], timeout=10)
    assert done["status"] == "cancelled"
    model = client.get("/models/stopme").json()
    assert model["epochs_trained"] == done["epochs_completed"] >= 2
    assert model["version"] == done["model_version"] == 2
    assert client.post(f"/jobs/{job['job_id']}/cancel").status_code == 409


def test_a_second_job_waits_for_the_first(client):
    create(client, model_id="queue", layer_sizes=[4, 8, 2], activations=["relu", "softmax"])
    first = long_job(client, "queue")
    second = submit(client, "queue", inputs=BLOBS_X, targets=BLOBS_Y, epochs=2)
    wait_job(client, first["job_id"], statuses={"running"})
    assert client.get(f"/jobs/{second['job_id']}").json()["status"] == "queued"
    client.post(f"/jobs/{first['job_id']}/cancel")
    assert wait_job(client, second["job_id"])["status"] == "succeeded"


def test_diverging_job_fails_and_keeps_finite_weights(client):
    create(client, model_id="boom", layer_sizes=[2, 16, 1], activations=["relu", "linear"])
    weights = client.get("/models/boom/weights").json()["layers"]
    x = (np.arange(64, dtype=float).reshape(32, 2) * 100).tolist()
    job = submit(client, "boom", inputs=x, targets=[[1e4]] * 32, epochs=5, batch_size=1, optimizer="sgd", learning_rate=1e3)
    done = wait_job(client, job["job_id"])
    assert done["status"] == "failed"
    assert done["error"].startswith("diverged at epoch 1") and "learning_rate" in done["error"]
    model = client.get("/models/boom").json()
    assert model["version"] == 1 and client.get("/models/boom/weights").json()["layers"] == weights
    assert model["buffer_size"] == 32  # the samples did not change the model: back in the buffer


def test_events_stream_progress_then_the_final_record(client):
    create(client, model_id="sse")
    job = submit(client, "sse", inputs=X4, targets=Y3, epochs=30, batch_size=1)
    with client.stream("GET", f"/jobs/{job['job_id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[-1] == "end" and set(names[:-1]) <= {"progress"} and len(names) >= 2
    final = json.loads(events[-1].split("\n", 1)[1].removeprefix("data: "))
    assert final["status"] == "succeeded" and final["job_id"] == job["job_id"]
    first = json.loads(events[0].split("\n", 1)[1].removeprefix("data: "))
    assert first["job_id"] == job["job_id"]


def test_a_stream_polls_without_the_history_and_ends_with_all_of_it(client):
    """Each 0.2 s poll of an open stream read the whole job, history included: a 10,000-epoch job's stream read
    more each time. Polls now leave the history out; the 'end' event reads it once."""
    create(client, model_id="sse-reads")
    job = submit(client, "sse-reads", inputs=X4, targets=Y3, epochs=40, batch_size=1)
    store = client.app.state.service.store
    asked, get_job = [], store.get_job
    store.get_job = lambda job_id, history_from=0: asked.append(history_from) or get_job(job_id, history_from)
    try:
        with client.stream("GET", f"/jobs/{job['job_id']}/events") as response:
            text = "".join(response.iter_text())
    finally:
        store.get_job = get_job
    final = json.loads(text.split("event: end\n", 1)[1].split("\n", 1)[0].removeprefix("data: "))
    assert final["status"] == "succeeded" and [h["epoch"] for h in final["history"]] == list(range(1, 41))
    assert asked[-1] == 0 and asked[:-1] and all(a is None for a in asked[:-1]), asked  # all but the last: none


def test_unknown_job_is_404(client):
    for method, path in [("get", "/jobs/nope"), ("post", "/jobs/nope/cancel"), ("get", "/jobs/nope/events")]:
        response = getattr(client, method)(path)
        assert response.status_code == 404 and "does not exist" in response.json()["detail"]
    create(client, model_id="jobless")
    assert "no training jobs" in client.get("/models/jobless/progress").json()["detail"]


@pytest.mark.parametrize("body, words", [
    ({"epochs": 10_001}, "NN_MAX_EPOCHS"),
    ({"epochs": 0}, "greater than or equal to 1"),
    ({"optimizer": "adamax"}, "valid names: "),
    ({"schedule": "linear"}, "cosine"),
    ({"schedule": "step", "schedule_options": {"decay_rate": 0.5}}, "does not take"),
    ({"schedule": "exponential", "decay_rate": 2}, "decay_rate"),
    ({"dropout": [0.5]}, "2 layers"),
    ({"dropout": [0.2, 0.5]}, "output layer"),
    ({"inputs": X4}, "together"),
    ({"validation_split": 1.0}, "less than 1"),
    ({"early_stopping": {"patience": 0}}, "greater than or equal to 1"),
    # a monitor the job's epochs never report failed the job at its first epoch (and the service had no monitor)
    ({"early_stopping": {"monitor": "val_acc"}, "validation_split": 0.3},
     "early_stopping.monitor 'val_acc' is not reported by this job; send one of: loss, accuracy, val_loss, val_accuracy"),
    ({"early_stopping": {"monitor": "val_loss"}}, "val_ keys need validation_split or validation_dataset"),
    ({"early_stopping": {"mode": "up"}}, "'auto', 'min' or 'max'"),
    ({"batchsize": 8}, "unknown field"),
])
def test_invalid_jobs_are_rejected(idle_client, body, words):
    if idle_client.get("/models/bad-jobs").status_code == 404:
        create(idle_client, model_id="bad-jobs")
    response = idle_client.post("/models/bad-jobs/training-jobs", json=body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]
    assert idle_client.post("/models/nope/training-jobs", json={}).status_code == 404


def test_early_stopping_may_watch_any_key_the_job_reports(tmp_path):
    """HTTP parity with the core: `monitor` and `mode`; on val_accuracy the job keeps its most accurate epoch (the
    core took lower as better for every key, and kept the least accurate one)."""
    from tests.api.conftest import backend_app, run_queued

    with backend_app("sqlite", tmp_path) as client:
        create(client, model_id="watched")
        body = {"inputs": X4 * 4, "targets": Y3 * 4, "epochs": 40, "validation_split": 0.25, "learning_rate": 0.05,
                "seed": 1, "early_stopping": {"monitor": "val_accuracy", "patience": 5}}
        assert client.post("/models/watched/training-jobs", json=body).status_code == 202
        (job,) = run_queued(client)
        assert job["status"] == "succeeded", job
        accuracies = [h["val_accuracy"] for h in job["history"]]
        assert min(accuracies) < max(accuracies), accuracies  # the first epochs were less accurate
        final = client.post("/models/watched/evaluate", json={"inputs": (X4 * 4)[-6:], "targets": (Y3 * 4)[-6:]}).json()
        assert final["metrics"]["accuracy"] == max(accuracies)


def test_waiting_jobs_cancel_at_once_and_give_samples_back(idle_client):
    create(idle_client, model_id="wait")
    buffering = submit(idle_client, "wait", min_samples=100)
    assert idle_client.post(f"/jobs/{buffering['job_id']}/cancel").json()["status"] == "cancelled"
    queued = submit(idle_client, "wait", inputs=X4, targets=Y3, min_samples=6)
    assert queued["status"] == "queued" and queued["n_samples"] == 6
    assert idle_client.get("/models/wait/samples").json()["buffer_size"] == 0  # claimed by the job
    assert idle_client.post(f"/jobs/{queued['job_id']}/cancel").json()["status"] == "cancelled"
    assert idle_client.get("/models/wait/samples").json()["buffer_size"] == 6  # back, unused


def test_consume_buffer_false_trains_on_a_copy(idle_client):
    create(idle_client, model_id="copy")
    idle_client.post("/models/copy/samples", json={"inputs": X4, "targets": Y3})
    job = submit(idle_client, "copy", consume_buffer=False, min_samples=6)
    assert job["status"] == "queued" and job["n_samples"] == 6
    assert idle_client.get("/models/copy/samples").json()["buffer_size"] == 6


def test_deleting_a_model_cancels_its_jobs(idle_client):
    create(idle_client, model_id="gone")
    job = submit(idle_client, "gone", min_samples=5)
    assert idle_client.delete("/models/gone").status_code == 204
    record = idle_client.get(f"/jobs/{job['job_id']}").json()
    assert record["status"] == "cancelled" and record["error"] == "model deleted"


def test_a_succeeded_job_reports_its_final_metrics(client):
    create(client, model_id="final-metrics")
    job = client.post("/models/final-metrics/training-jobs", json={
        "inputs": X4 * 5, "targets": Y3 * 5, "epochs": 20, "batch_size": 6, "learning_rate": 0.05,
        "validation_split": 0.2}).json()
    done = wait_job(client, job["job_id"])
    assert done["status"] == "succeeded"
    metrics = done["metrics"]
    assert metrics["on"] == "validation" and metrics["samples"] == 6
    assert np.sum(metrics["confusion_matrix"]) == 6 and len(metrics["confusion_matrix"]) == 3
    assert metrics["accuracy"] == done["history"][-1]["val_accuracy"]
    assert "metrics" not in (done["progress"] or {})


def test_a_layers_model_trained_over_http_equals_the_core(client):
    """BatchNorm, leaky_relu alpha, a layer without biases and reduce_on_plateau: the service's
    weights after a job are bit for bit those of the same fit in the core."""
    from neural_net import BatchNorm, Dense, Network

    layers = [{"type": "dense", "units": 8, "activation": "leaky_relu", "alpha": 0.2, "use_bias": False},
              {"type": "batch_norm"}, {"type": "dense", "units": 2, "activation": "softmax"}]
    create(client, model_id="spec-train", layer_sizes=None, activations=None, input_size=4, layers=layers)
    schedule = {"factor": 0.5, "patience": 1, "min_lr": 0.001}
    job = submit(client, "spec-train", inputs=BLOBS_X, targets=BLOBS_Y, epochs=8, batch_size=8, learning_rate=0.05,
                 validation_split=0.25, schedule="reduce_on_plateau", schedule_options=schedule)
    final = wait_job(client, job["job_id"])
    assert final["status"] == "succeeded", final

    net = Network(4, seed=0)
    net.add(Dense(8, activation={"name": "leaky_relu", "alpha": 0.2}, use_bias=False))
    net.add(BatchNorm()).add(Dense(2, activation="softmax"))
    x = np.asarray(BLOBS_X, dtype=np.float32)
    history = net.fit(x, np.asarray(BLOBS_Y), epochs=8, batch_size=8, learning_rate=0.05, validation_split=0.25,
                      schedule="reduce_on_plateau", schedule_options=schedule)
    assert [e["learning_rate"] for e in final["history"]] == history.history["learning_rate"]
    assert min(history.history["learning_rate"]) < 0.05  # the plateau cut the rate at least once
    outputs = client.post("/models/spec-train/output", json={"inputs": BLOBS_X}).json()["outputs"]
    np.testing.assert_array_equal(np.asarray(outputs, dtype=np.float32), net.predict(x))


def test_concurrent_jobs_with_inline_samples_train_on_exactly_their_own(client):
    """Issue 10 item 4: 40 concurrent jobs of 10 inline samples on one model; none hangs, none takes another's samples."""
    from concurrent.futures import ThreadPoolExecutor

    create(client, model_id="inline-race")
    bodies = [{"inputs": [[i, k, 0.5, -0.5] for k in range(10)], "targets": [k % 3 for k in range(10)], "epochs": 1,
               "batch_size": 10} for i in range(40)]
    with ThreadPoolExecutor(40) as pool:
        jobs = list(pool.map(lambda body: submit(client, "inline-race", **body), bodies))
    assert all(j["status"] in ("queued", "running", "succeeded") and j["n_samples"] == 10 for j in jobs)
    done = [wait_job(client, j["job_id"], timeout=120) for j in jobs]
    assert [(d["status"], d["n_samples"], d["metrics"]["samples"]) for d in done] == [("succeeded", 10, 10)] * 40
    model = client.get("/models/inline-race").json()
    assert model["version"] == 41 and model["buffer_size"] == 0


def test_inline_samples_fewer_than_min_samples_are_refused(idle_client):
    create(idle_client, model_id="inline-min")
    response = idle_client.post("/models/inline-min/training-jobs", json={"inputs": X4, "targets": Y3, "min_samples": 7})
    assert response.status_code == 422 and "min_samples" in response.json()["detail"]


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_history_from_returns_the_entries_a_client_does_not_have_yet(tmp_path, backend):
    """A dashboard following a job fetched its whole history at every new epoch: O(epochs) per epoch per viewer."""
    from tests.api.conftest import backend_app, run_queued

    with backend_app(backend, tmp_path) as client:
        create(client, model_id="hist")
        job_id = submit(client, "hist", inputs=X4, targets=Y3, epochs=7)["job_id"]
        run_queued(client)
        whole = client.get(f"/jobs/{job_id}").json()["history"]
        assert [h["epoch"] for h in whole] == list(range(1, 8))
        for start in (0, 3, 7, 100):
            assert client.get(f"/jobs/{job_id}", params={"history_from": start}).json()["history"] == whole[start:]
        assert client.get(f"/jobs/{job_id}", params={"history_from": -1}).status_code == 422

def test_a_job_that_would_count_epochs_past_what_a_model_file_records_is_refused(idle_client):
    """A model imported at epochs_trained 2**53 took a 1-epoch job, which committed 2**53 + 1: from then on every
    /output, /evaluate, export and job answered that the stored file was out of range."""
    from neural_net import Network

    net = Network.from_layer_sizes([4, 3], activations=["softmax"], seed=0)
    net.epochs_trained = 2**53
    assert idle_client.post("/models/import", params={"model_id": "old-timer"}, content=net.to_bytes()).status_code == 201
    response = idle_client.post("/models/old-timer/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 1})
    assert response.status_code == 422
    assert response.json()["detail"] == ("the model has trained 9007199254740992 epochs; 1 more would pass "
                                         "9007199254740992, the most a model file records: train a new model from "
                                         "its weights")

@pytest.mark.parametrize("path", ["training-jobs", "search-jobs"])
@pytest.mark.parametrize("targets", [[], [0, 1, 2]])
def test_empty_inline_inputs_are_refused_not_read_as_the_buffer(idle_client, path, targets):
    """`"inputs": []` was taken as no inputs: the job trained on the buffer (and emptied it), and with targets
    of another length it waited in buffering."""
    if idle_client.get("/models/inline-empty").status_code == 404:
        create(idle_client, model_id="inline-empty")
    idle_client.post("/models/inline-empty/samples", json={"inputs": X4, "targets": Y3})
    body = {"inputs": [], "targets": targets, **({"space": {"learning_rate": [0.1]}} if path == "search-jobs" else {})}
    response = idle_client.post(f"/models/inline-empty/{path}", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith("`inputs` is empty: send at least one row, or leave `inputs` and "
                                                "`targets` out to")
    assert idle_client.get("/models/inline-empty/samples").json()["buffer_size"] >= 6  # nothing took the buffer


@pytest.mark.parametrize("split, words", [(0.99, "holds out 6 of 6 samples (the rounded fraction), leaving none to "
                                                 "train on; choose a split that holds out 1 to 5 of them"),
                                          (0.0001, "holds out 0 of 6 samples (the rounded fraction), leaving none to "
                                                   "validate on")])
def test_a_validation_split_that_leaves_a_side_empty_is_a_422_at_submit(idle_client, split, words):
    """The job was accepted (202), then failed; its inline rows went to the model's buffer."""
    if idle_client.get("/models/split-check").status_code == 404:
        create(idle_client, model_id="split-check")
    response = idle_client.post("/models/split-check/training-jobs",
                                json={"inputs": X4, "targets": Y3, "validation_split": split})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    dataset = idle_client.post("/datasets", json={"inputs": X4, "targets": Y3}).json()["dataset_id"]
    response = idle_client.post("/models/split-check/training-jobs", json={"dataset": dataset, "validation_split": split})
    assert response.status_code == 422 and words in response.json()["detail"], response.text
    assert idle_client.get("/models/split-check/samples").json()["buffer_size"] == 0
    assert idle_client.get("/jobs", params={"model_id": "split-check"}).json()["count"] == 0


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory):
    """A real server without workers (a job stays buffering: its stream would never end by itself),
    with 2 stream slots, quick keep-alives and 2-second streams."""
    from tests.servers import start_server, stop_server

    url, process = start_server(tmp_path_factory.mktemp("data"), NN_WORKERS=0, NN_MAX_STREAMS=2,
                                NN_STREAM_KEEPALIVE_SECONDS=0.3, NN_STREAM_MAX_SECONDS=2)
    assert httpx.post(f"{url}/models", json={"model_id": "s", "layer_sizes": [4, 3]}).status_code == 201
    job = httpx.post(f"{url}/models/s/training-jobs", json={"min_samples": 10**5}).json()
    yield url, job["job_id"]
    stop_server(process)


def read_until(lines, wanted: str, timeout: float = 30.0) -> list[str]:
    """Lines of a stream (an iter_lines() iterator) up to the first that starts with `wanted`."""
    seen, deadline = [], time.monotonic() + timeout
    for line in lines:
        seen.append(line)
        if line.startswith(wanted):
            return seen
        if time.monotonic() > deadline:
            break
    pytest.fail(f"no {wanted!r} line within {timeout} s: {seen[-5:]}")


def test_event_streams_are_capped_with_retry_after(stream_server):
    url, job_id = stream_server
    timeout = httpx.Timeout(10.0)
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=timeout) as first, \
            httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=timeout) as second:
        assert first.status_code == second.status_code == 200
        lines = first.iter_lines(), second.iter_lines()  # kept: a dropped iterator closes its response
        read_until(lines[0], "event: progress"), read_until(lines[1], "event: progress")
        refused = httpx.get(f"{url}/jobs/{job_id}/events", timeout=timeout)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "NN_MAX_STREAMS" in refused.json()["detail"]

    def opens():  # the slots come back when the clients leave
        with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=timeout) as again:
            return again.status_code
    wait_for(opens, lambda status: status == 200, timeout=30)


def test_a_quiet_stream_sends_keep_alives_and_ends_after_its_maximum(stream_server):
    url, job_id = stream_server
    with httpx.stream("GET", f"{url}/jobs/{job_id}/events", timeout=httpx.Timeout(10.0)) as response:
        lines = response.iter_lines()
        read_until(lines, ": keep-alive")
        read_until(lines, "event: timeout")
        data = json.loads(read_until(lines, "data:")[-1].removeprefix("data:"))
        assert data["status"] == "buffering" and "NN_STREAM_MAX_SECONDS" in data["detail"]
        assert list(lines) == [""]  # and the server ended the stream
