"""GET /metrics parses with Prometheus' own text parser and counts what happened."""
import io
import threading

import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from api import metrics
from neural_net import Network
from tests.api.conftest import IRIS, X4, Y3, backend_app, wait_job


def scrape(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_metrics_count_requests_jobs_and_buffers(client):
    client.post("/models", json={**IRIS, "model_id": "metrics-iris"}).raise_for_status()
    client.post("/models/metrics-iris/samples", json={"inputs": X4[:2], "targets": Y3[:2]}).raise_for_status()
    client.get("/models/no-such-model")
    job = client.post("/models/metrics-iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 3}).json()
    wait_job(client, job["job_id"])
    client.post("/models/metrics-iris/samples", json={"inputs": X4[:3], "targets": Y3[:3]}).raise_for_status()
    samples = scrape(client)
    created = samples[("nn_http_requests_total", (("method", "POST"), ("route", "/models"), ("status", "201")))]
    assert created >= 1
    assert samples[("nn_http_requests_total", (("method", "GET"), ("route", "/models/{model_id}"), ("status", "404")))] >= 1
    assert samples[("nn_http_request_duration_seconds_count", (("method", "POST"), ("route", "/models")))] >= 1
    assert samples[("nn_jobs", (("state", "succeeded"),))] >= 1
    # the job trained on its own inline samples; the buffer keeps the 2 added before it and the 3 after
    assert samples[("nn_buffer_samples", (("model_id", "metrics-iris"),))] == 5
    assert ("nn_training_samples_per_second", ()) in samples and samples[("nn_store_up", ())] == 1
    # what /health shows, for alerting on dead workers or a growing queue
    health = client.get("/health").json()
    assert samples[("nn_workers_alive", ())] == health["workers_alive"] == 1
    assert samples[("nn_queued_jobs", ())] == health["queued_jobs"] == 0
    assert samples[("nn_queue_length", ())] == health["queue_length"] == 0


def test_onnx_export_over_http_matches_outputs(client):
    client.post("/models", json={**IRIS, "model_id": "onnx-iris"}).raise_for_status()
    job = client.post("/models/onnx-iris/training-jobs", json={"inputs": X4, "targets": Y3, "epochs": 5}).json()
    wait_job(client, job["job_id"])
    response = client.get("/models/onnx-iris/export", params={"format": "onnx"})
    assert response.status_code == 200 and 'filename="onnx-iris.onnx"' in response.headers["content-disposition"]
    session = ort.InferenceSession(response.content, providers=["CPUExecutionProvider"])
    onnx_out = session.run(["output"], {"input": np.array(X4, dtype=np.float32)})[0]
    service_out = client.post("/models/onnx-iris/output", json={"inputs": X4}).json()["outputs"]
    np.testing.assert_allclose(onnx_out, service_out, atol=1e-5)
    npz = client.get("/models/onnx-iris/export").content
    np.testing.assert_allclose(Network.load(io.BytesIO(npz)).predict(X4), service_out, atol=1e-6)
    assert client.get("/models/onnx-iris/export", params={"format": "pickle"}).status_code == 422


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    return request.param


def every_scrape_scans(monkeypatch):
    """So each scrape sees the last append (raising=False: the tests fail on the code before the scan's reuse)."""
    monkeypatch.setattr(metrics, "BUFFER_SCAN_MIN_SECONDS", 0.0, raising=False)
    monkeypatch.setattr(metrics, "BUFFER_SCAN_SHARE", 0.0, raising=False)


def buffer_series(samples) -> dict[str, float]:
    return {dict(labels)["model_id"]: value for (name, labels), value in samples.items() if name == "nn_buffer_samples"}


def test_only_the_largest_buffers_get_a_series_and_the_totals_count_all(backend, tmp_path, monkeypatch):
    """A series per model grew /metrics without bound (5,000 models: 5,002 series, 695 KB), empty buffers too."""
    every_scrape_scans(monkeypatch)
    with backend_app(backend, tmp_path, metrics_max_models=2) as client:
        for model_id, rows in (("a", 3), ("b", 5), ("c", 1), ("empty", 0), ("e", 6)):
            client.post("/models", json={**IRIS, "model_id": model_id}).raise_for_status()
            if rows:
                client.post(f"/models/{model_id}/samples", json={"inputs": X4[:rows], "targets": Y3[:rows]}).raise_for_status()
        samples = scrape(client)
        assert buffer_series(samples) == {"e": 6, "b": 5}
        assert samples[("nn_buffered_samples", ())] == 15 and samples[("nn_buffered_models", ())] == 4
        assert "top 2 models" in client.get("/metrics").text  # the HELP line says what the series are
        client.delete("/models/e/samples").raise_for_status()  # an emptied buffer leaves, the next largest comes in
        samples = scrape(client)
        assert buffer_series(samples) == {"b": 5, "a": 3}
        assert samples[("nn_buffered_samples", ())] == 9 and samples[("nn_buffered_models", ())] == 3


def test_many_models_leave_the_page_bounded(tmp_path, monkeypatch):
    every_scrape_scans(monkeypatch)
    with backend_app("sqlite", tmp_path, metrics_max_models=5) as client:
        for i in range(60):
            client.post("/models", json={**IRIS, "model_id": f"m{i:02d}"}).raise_for_status()
            if i % 2:
                client.post(f"/models/m{i:02d}/samples", json={"inputs": X4[:1], "targets": Y3[:1]}).raise_for_status()
        samples = scrape(client)
        assert buffer_series(samples) == {f"m{i:02d}": 1 for i in (1, 3, 5, 7, 9)}  # ties: by id
        assert samples[("nn_buffered_samples", ())] == 30 and samples[("nn_buffered_models", ())] == 30
        assert client.get("/metrics").text.count("nn_buffer_samples{") == 5


def test_no_series_per_model_with_zero(tmp_path):
    with backend_app("sqlite", tmp_path, metrics_max_models=0) as client:
        client.post("/models", json=IRIS).raise_for_status()
        client.post("/models/iris/samples", json={"inputs": X4, "targets": Y3}).raise_for_status()
        samples = scrape(client)
        assert buffer_series(samples) == {} and samples[("nn_buffered_samples", ())] == 6


class FakeService:
    def __init__(self, clock, took: float = 0.0):
        self.clock, self.took, self.scans, self.sizes = clock, took, 0, {"a": 1}

    def metrics_snapshot(self, buffers: bool = True):
        self.scans += 1
        self.clock.now += self.took
        return {"jobs": {}, "samples_per_second": 0.0, "buffers": dict(self.sizes)}


class Clock:
    now = 100.0

    def __call__(self):
        return self.now


def test_one_scan_serves_the_scrapes_of_a_few_seconds():
    clock = Clock()
    service = FakeService(clock)
    scan = metrics.BufferScan(service, top=10, clock=clock)
    assert scan.read() == ([("a", 1)], 1, 1) and service.scans == 1
    service.sizes = {"a": 1, "b": 2}
    clock.now += metrics.BUFFER_SCAN_MIN_SECONDS - 0.1
    assert scan.read() == ([("a", 1)], 1, 1) and service.scans == 1  # a client calling /metrics in a loop
    clock.now += 0.2
    assert scan.read() == ([("b", 2), ("a", 1)], 3, 2) and service.scans == 2


def test_a_slow_scan_waits_ten_times_its_duration():
    clock = Clock()
    service = FakeService(clock, took=2.0)  # 2 s: tens of thousands of models
    scan = metrics.BufferScan(service, top=10, clock=clock)
    scan.read()
    clock.now += 19.0
    scan.read()
    assert service.scans == 1
    clock.now += 1.0
    scan.read()
    assert service.scans == 2


def test_scrapes_that_come_together_share_one_scan():
    gate = threading.Event()

    class Slow:
        scans = 0

        def metrics_snapshot(self, buffers: bool = True):
            self.scans += 1
            gate.wait(5)
            return {"buffers": {"a": 1}}

    service = Slow()
    scan = metrics.BufferScan(service, top=10)
    threads = [threading.Thread(target=scan.read) for _ in range(8)]
    for thread in threads:
        thread.start()
    gate.set()
    for thread in threads:
        thread.join(5)
    assert service.scans == 1
