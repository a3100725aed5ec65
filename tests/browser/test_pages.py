"""/docs and /dashboard in headless Chromium with every non-loopback request blocked (no internet)."""
import math

import httpx

from tests.conftest import ARTIFACTS
from tests.servers import start_server, stop_server


def test_swagger_ui_works_offline(server, page):
    page.goto(f"{server}/docs")
    page.wait_for_selector(".swagger-ui .info .title", timeout=20_000)
    assert "Neural network training service" in page.inner_text(".swagger-ui .info .title")
    page.wait_for_selector(".opblock-summary-path[data-path='/models/{model_id}/training-jobs']", timeout=10_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "docs.png", full_page=False)
    page.goto(f"{server}/redoc")
    page.wait_for_selector("text=Neural network training service", timeout=20_000)



def test_swagger_try_it_out_uploads_the_csv_example_of_post_datasets(server, page):
    """A new user's first upload: POST /datasets, "Try it out", "Execute", as the page opens. multipart/form-data came
    first before, and switching to text/csv after "Try it out" sent the form's value (Swagger UI issue 10738)."""
    page.goto(f"{server}/docs")
    block = page.locator("#operations-datasets-upload_dataset_datasets_post")
    block.locator(".opblock-summary").click()
    block.locator(".try-out__btn").click()
    assert block.locator(".content-type-wrapper select, select.content-type").first.input_value() == "text/csv"
    block.locator(".execute").click()
    status = block.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=20_000)
    assert status.inner_text().strip() == "201", block.locator(".live-responses-table").inner_text()
    assert httpx.get(f"{server}/datasets").json()["count"] == 1

def test_dashboard_follows_a_job_live(server, page):
    http = httpx.Client(base_url=server, timeout=10)
    http.post("/models", json={"model_id": "browser", "layer_sizes": [2, 32, 3],
                               "activations": ["relu", "softmax"], "seed": 0}).raise_for_status()
    targets = [i % 3 for i in range(300)]  # three separable blobs
    inputs = [[k + 0.4 * math.sin(i), 0.5 * k + 0.4 * math.cos(1.7 * i)] for i, k in enumerate(targets)]
    # the job waits for its samples, so the page is watching before the first epoch, however fast the machine
    job = http.post("/models/browser/training-jobs", json={
        "min_samples": 300, "epochs": 150, "batch_size": 2, "validation_split": 0.2}).json()

    page.goto(f"{server}/dashboard")
    page.click("#models tr:has-text('browser')")
    page.click(f"#jobs tr:has-text('{job['job_id'][:8]}')")
    page.wait_for_selector("#job-status.buffering", timeout=20_000)
    assert page.evaluate("state.history.length") == 0
    http.post("/models/browser/samples", json={"inputs": inputs, "targets": targets}).raise_for_status()
    page.wait_for_selector("#job-status.succeeded", timeout=120_000)  # followed live: the page was never reloaded
    assert page.evaluate("state.history.length") == 150
    assert page.inner_text("#s-eta") == "done"
    page.wait_for_selector("#matrix-box:not([hidden])", timeout=10_000)  # the finished classifier's heat map
    assert page.locator("#matrix td").count() == 9
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard.png", full_page=True)


def test_dashboard_shows_a_search_as_a_table_of_trials_sorted_by_score(server, page):
    http = httpx.Client(base_url=server, timeout=10)
    http.post("/models", json={"model_id": "searched", "layer_sizes": [2, 8, 3],
                               "activations": ["relu", "softmax"], "seed": 0}).raise_for_status()
    targets = [i % 3 for i in range(150)]
    inputs = [[k + 0.4 * math.sin(i), 0.5 * k + 0.4 * math.cos(1.7 * i)] for i, k in enumerate(targets)]
    job = http.post("/models/searched/search-jobs", json={
        "inputs": inputs, "targets": targets, "space": {"learning_rate": [0.001, 0.01, 0.1], "hidden_sizes": [[4], [16]]},
        "metric": "accuracy", "epochs": 20, "batch_size": 8}).json()
    page.goto(f"{server}/dashboard")
    page.click("#models tr:has-text('searched')")
    page.click(f"#jobs tr:has-text('{job['job_id'][:8]}')")
    page.wait_for_selector("#job-status.succeeded", timeout=60_000)
    rows = page.eval_on_selector_all("#trials tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    assert len(rows) == 6 and [r[0] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    scores = [float(r[3]) for r in rows]
    assert scores == sorted(scores, reverse=True) and "trials 6/6" in page.inner_text("#s-epoch")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "dashboard_search.png", full_page=True)


def test_dashboard_follows_a_job_again_after_the_service_restarts(tmp_path, page):
    """The stream ended with the server ('stream closed: Failed to fetch') and the page stayed at the epoch it had,
    while the job went on after the restart; now it reconnects by itself and the progress moves on."""
    url, process = start_server(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    http = httpx.Client(base_url=url, timeout=10)
    http.post("/models", json={"model_id": "restart", "layer_sizes": [2, 32, 3], "activations": ["relu", "softmax"],
                               "seed": 0}).raise_for_status()
    targets = [i % 3 for i in range(300)]
    inputs = [[k + 0.4 * math.sin(i), 0.5 * k + 0.4 * math.cos(1.7 * i)] for i, k in enumerate(targets)]
    job = http.post("/models/restart/training-jobs", json={"inputs": inputs, "targets": targets, "epochs": 5000,
                                                           "batch_size": 2}).json()["job_id"]
    try:
        page.goto(f"{url}/dashboard?model=restart&job={job}")
        page.wait_for_selector("#job-status.running", timeout=60_000)
        stop_server(process)  # SIGTERM: the stream ends ('shutdown'), the job goes back to the queue
        page.wait_for_function("document.getElementById('job-error').textContent.startsWith('stream closed; reconnecting')",
                               timeout=60_000)
        epoch = page.evaluate("state.jobRecord ? state.jobRecord.epochs_completed : 0")
        _, process = start_server(tmp_path, port=port)
        page.wait_for_function("document.getElementById('job-error').textContent === ''", timeout=60_000)
        page.wait_for_function(f"document.getElementById('job-status').textContent === 'running'", timeout=60_000)
        http.post(f"/jobs/{job}/cancel").raise_for_status()
        page.wait_for_selector("#job-status.cancelled", timeout=60_000)  # followed to its end, never reloaded
        assert page.evaluate("state.jobRecord.epochs_completed") >= epoch
    finally:
        http.close()
        stop_server(process)
