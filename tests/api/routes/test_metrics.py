"""GET /metrics parses with Prometheus' own text parser and counts what happened."""
import io

import numpy as np
import onnxruntime as ort
from prometheus_client.parser import text_string_to_metric_families

from neural_net import Network
from tests.api.conftest import IRIS, X4, Y3, wait_job


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
