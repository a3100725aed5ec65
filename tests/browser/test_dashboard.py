"""/dashboard in headless Chromium against a real service with API keys: links, the job it opens on, the
loss, accuracy and learning-rate curves, two jobs overlaid, ETA of ended jobs, the labelled confusion matrix,
every column inside 1280x800 and 1920x1080 (screenshots in test-artifacts/), the favicon, a model's versions
with restore (admin key; a read key sees restore and cancel disabled, titled with the scope they need), and
the all-jobs view with filters and paging."""
import math
import time
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from tests.conftest import ARTIFACTS, start_server, stop_server

ADMIN, READER = "ops-key", "viewer-key"
SMALL, LARGE = {"width": 1280, "height": 800}, {"width": 1920, "height": 1080}
TERMINAL = ("succeeded", "failed", "cancelled")
DEADLINE = 60_000  # ms, for DOM conditions
CLASS_NAMES = ["setosa", "versicolor", "a class name long enough to be shortened"]  # model clf's


def blobs(n):
    targets = [i % 3 for i in range(n)]  # three separable classes
    return [[k + 0.4 * math.sin(i), 0.5 * k + 0.4 * math.cos(1.7 * i)] for i, k in enumerate(targets)], targets


def wait_job(http, job_id, statuses=TERMINAL, timeout=120.0):
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}").raise_for_status().json()
        if job["status"] in statuses:
            return job
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} is {job['status']} after {timeout} s")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """A service with an admin and a read key; model clf with two finished jobs (A, B), model pager with ten
    one-epoch jobs, and a long job on clf that is running when the tests start."""
    url, process = start_server(tmp_path_factory.mktemp("data"), NN_API_KEYS=f"ops:{ADMIN}:admin,viewer:{READER}:read")
    http = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})
    inputs, targets = blobs(150)
    http.post("/models", json={"model_id": "clf", "layer_sizes": [2, 16, 3], "activations": ["relu", "softmax"],
                               "seed": 0, "class_names": CLASS_NAMES}).raise_for_status()
    http.post("/models", json={"model_id": "pager", "layer_sizes": [2, 4, 3], "activations": ["relu", "softmax"],
                               "seed": 1}).raise_for_status()
    a = http.post("/models/clf/training-jobs", json={
        "inputs": inputs, "targets": targets, "epochs": 30, "batch_size": 8, "validation_split": 0.2,
        "learning_rate": 0.05, "schedule": "exponential", "decay_rate": 0.9}).raise_for_status().json()["job_id"]
    b = http.post("/models/clf/training-jobs", json={
        "inputs": inputs, "targets": targets, "epochs": 20, "batch_size": 16, "validation_split": 0.2,
        "learning_rate": 0.01}).raise_for_status().json()["job_id"]
    pager = [http.post("/models/pager/training-jobs", json={"inputs": inputs[:30], "targets": targets[:30], "epochs": 1})
             .raise_for_status().json()["job_id"] for _ in range(10)]
    for job_id in [a, b, *pager]:
        assert wait_job(http, job_id)["status"] == "succeeded"
    long_inputs, long_targets = blobs(300)
    running = http.post("/models/clf/training-jobs", json={
        "inputs": long_inputs, "targets": long_targets, "epochs": 5000, "batch_size": 2}).raise_for_status().json()["job_id"]
    wait_job(http, running, statuses=("running",))
    yield {"url": url, "http": http, "a": a, "b": b, "pager": pager, "running": running}
    http.post(f"/jobs/{running}/cancel")
    stop_server(process)


def open_page(page, url, key=ADMIN, viewport=SMALL):
    """Opens url the way a returning user does: the key is already in the page's storage."""
    page.set_viewport_size(viewport)
    page.add_init_script(f"if (!localStorage.getItem('nn-api-key')) localStorage.setItem('nn-api-key', {key!r})")
    page.goto(url)
    page.wait_for_selector("body[data-ready=true]", timeout=DEADLINE)


def query(page):
    return {k: v[0] for k, v in parse_qs(urlparse(page.url).query).items()}


def hidden_cells(page):
    """Table cells and headers of the page that stick out of the viewport or of their section, horizontally."""
    return page.evaluate("""() => {
        const width = document.documentElement.clientWidth, out = [];
        for (const c of document.querySelectorAll("main th, main td")) {
            const box = c.getBoundingClientRect(), section = c.closest("section").getBoundingClientRect();
            if (!box.width || c.closest("[hidden]")) continue;
            if (box.left < 0 || box.right > width + 0.5 || box.right > section.right + 0.5)
                out.push(`${c.textContent.trim().slice(0, 20)}: ${box.left.toFixed(0)}..${box.right.toFixed(0)} (section ends ${section.right.toFixed(0)})`);
        }
        if (document.documentElement.scrollWidth > width) out.push(`page scrolls sideways: ${document.documentElement.scrollWidth} > ${width}`);
        return out;
    }""")


def overlapping_labels(page):
    """Charts whose y-axis label overlaps a tick label, or whose tick labels are not numbers."""
    return page.evaluate("""() => [...document.querySelectorAll('.chart svg')].filter(svg => {
        const label = svg.querySelector('.y-label'), ticks = [...svg.querySelectorAll('.y-tick')];
        if (!label || !ticks.length) return false;
        const right = label.getBoundingClientRect().right;
        return ticks.some(t => t.getBoundingClientRect().left < right || !isFinite(Number(t.textContent)));
    }).map(svg => svg.id)""")


def screenshot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name)


def test_without_ids_it_opens_the_running_job_then_shows_no_eta_once_it_ended(service, page):
    page.set_viewport_size(SMALL)
    page.goto(f"{service['url']}/dashboard")  # no key yet: the page says what to do
    page.wait_for_function("document.getElementById('error').textContent.includes('enter the API key')", timeout=DEADLINE)
    page.fill("#apikey", ADMIN)
    page.dispatch_event("#apikey", "change")
    page.wait_for_function(f"document.getElementById('job-id').textContent === {service['running']!r}", timeout=DEADLINE)
    page.wait_for_function("/^[0-9.]+ (s|min|h)$/.test(document.getElementById('s-eta').textContent)", timeout=DEADLINE)
    assert query(page) == {"job": service["running"]}
    assert page.inner_text("#job-status") == "running"
    page.wait_for_selector("#models tr[data-model='clf']", timeout=DEADLINE)
    page.wait_for_function("document.getElementById('error').textContent === ''", timeout=DEADLINE)
    assert overlapping_labels(page) == []  # a constant learning rate of 0.001: small tick values
    assert hidden_cells(page) == []
    screenshot(page, "dashboard_running_1280x800.png")

    page.click("#cancel")
    page.wait_for_selector("#job-status.cancelled", timeout=DEADLINE)
    assert page.inner_text("#s-eta") == "ended" and page.is_hidden("#cancel")
    page.goto(f"{service['url']}/dashboard")  # nothing running now: the most recent job
    page.wait_for_selector("body[data-ready=true]", timeout=DEADLINE)
    assert page.inner_text("#job-id") == service["running"] and page.inner_text("#s-eta") == "ended"


def test_a_link_to_a_model_and_job_shows_its_curves_overlaid_with_a_second_job(service, page):
    a, b, http = service["a"], service["b"], service["http"]
    history_a = http.get(f"/jobs/{a}").json()["history"]
    history_b = http.get(f"/jobs/{b}").json()["history"]
    open_page(page, f"{service['url']}/dashboard?model=clf&job={a}&compare={b}")
    assert page.inner_text("#job-id") == a and page.inner_text("#s-eta") == "done"
    assert page.get_attribute("#models tr.selected", "data-model") == "clf"
    page.wait_for_selector(f"#chart-loss path[data-job='{b}']", timeout=DEADLINE)

    charts = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('.chart svg')].map(svg => [svg.id, {
        x: svg.querySelector('.x-label').textContent, y: svg.querySelector('.y-label').textContent,
        ticks: svg.querySelectorAll('.y-tick').length,
        series: [...svg.querySelectorAll('path.series')].map(p => [p.dataset.key, p.dataset.job, +p.dataset.points,
                                                                     p.getAttribute('stroke-dasharray')])}]))""")
    assert {k: (c["x"], c["y"]) for k, c in charts.items()} == {
        "chart-loss": ("epoch", "loss"), "chart-accuracy": ("epoch", "accuracy"), "chart-lr": ("epoch", "learning rate")}
    assert all(c["ticks"] == 5 for c in charts.values()) and overlapping_labels(page) == []
    solid, dashed = (len(history_a), ""), (len(history_b), "6 4")
    assert sorted(charts["chart-loss"]["series"]) == sorted([["loss", a, *solid], ["val_loss", a, *solid],
                                                             ["loss", b, *dashed], ["val_loss", b, *dashed]])
    assert sorted(charts["chart-accuracy"]["series"]) == sorted([["accuracy", a, *solid], ["val_accuracy", a, *solid],
                                                                 ["accuracy", b, *dashed], ["val_accuracy", b, *dashed]])
    assert sorted(charts["chart-lr"]["series"]) == sorted([["learning_rate", a, *solid], ["learning_rate", b, *dashed]])
    assert history_a[0]["learning_rate"] > history_a[-1]["learning_rate"]  # the exponential schedule: a falling lr curve
    for svg in ("#chart-loss", "#chart-accuracy", "#chart-lr"):  # the three charts sit side by side or wrap, never overlap
        box = page.locator(svg).bounding_box()
        assert box["width"] >= 250 and box["height"] >= 200

    page.wait_for_selector("#matrix th.true >> text=versicolor", timeout=DEADLINE)  # clf's class names label the matrix
    classes = ["setosa", "versicolor", "a class name long enoug\u2026"]
    assert page.eval_on_selector_all("#matrix th.predicted", "t => t.map(c => c.textContent)") == classes
    assert page.eval_on_selector_all("#matrix th.true", "t => t.map(c => c.textContent)") == classes
    assert page.get_attribute("#matrix th.true >> nth=2", "title") == f"{CLASS_NAMES[2]} (class 2)"
    matrix = http.get(f"/jobs/{a}").json()["metrics"]["confusion_matrix"]
    assert page.eval_on_selector_all("#matrix tbody tr", "rows => rows.map(r => [...r.cells].slice(1).map(c => +c.textContent))") == matrix

    icon = page.evaluate("document.querySelector('link[rel=icon]').href")
    answer = page.request.get(icon)  # no key: the icon is open, as the page is
    assert answer.status == 200 and answer.headers["content-type"] == "image/svg+xml" and b"<svg" in answer.body()
    assert page.evaluate("document.querySelector('header img').naturalWidth") > 0

    for viewport, name in ((SMALL, "dashboard_1280x800.png"), (LARGE, "dashboard_1920x1080.png")):
        page.set_viewport_size(viewport)
        page.wait_for_function(f"document.getElementById('chart-loss').viewBox.baseVal.width === "
                               f"Math.round(document.getElementById('chart-loss').getBoundingClientRect().width)", timeout=DEADLINE)
        assert hidden_cells(page) == [], viewport
        screenshot(page, name)


def test_the_url_follows_what_the_user_selects(service, page):
    a, b = service["a"], service["b"]
    open_page(page, f"{service['url']}/dashboard?model=clf&job={a}")
    page.click(f"#jobs tr[data-job='{b}']")
    page.wait_for_function(f"location.search.includes('job={b}')", timeout=DEADLINE)
    assert query(page) == {"model": "clf", "job": b} and page.inner_text("#job-id") == b

    page.select_option("#compare", a)
    page.wait_for_function(f"location.search.includes('compare={a}')", timeout=DEADLINE)
    page.wait_for_selector(f"#chart-loss path[data-job='{a}']", timeout=DEADLINE)

    page.click("#models tr[data-model='pager']")  # a model opens on its most recent job
    page.wait_for_function("location.search.includes('model=pager')", timeout=DEADLINE)
    page.wait_for_function(f"document.getElementById('job-id').textContent === {service['pager'][-1]!r}", timeout=DEADLINE)
    assert query(page)["job"] == service["pager"][-1]
    page.wait_for_function("[...document.querySelectorAll('#matrix th.true')].map(c => c.textContent).join() === "  # no names: indices
                           "'class 0,class 1,class 2'", timeout=DEADLINE)
    page.wait_for_function("document.getElementById('versions-model').textContent === 'of pager'", timeout=DEADLINE)

    page.go_back()  # the browser's back button returns to the previous selection
    page.wait_for_function(f"document.getElementById('job-id').textContent === {b!r}", timeout=DEADLINE)
    assert query(page) == {"model": "clf", "job": b, "compare": a}


def test_the_all_jobs_view_filters_and_pages(service, page):
    open_page(page, f"{service['url']}/dashboard?job={service['a']}")
    assert page.input_value("#f-model") == ""  # every model's jobs
    page.select_option("#f-status", "succeeded")
    page.select_option("#f-limit", "10")
    page.wait_for_function("document.getElementById('page-info').textContent === '1-10 of 12'", timeout=DEADLINE)
    rows = page.eval_on_selector_all("#jobs tr", "rows => rows.map(r => [r.dataset.job, r.cells[1].textContent, r.cells[2].textContent, r.cells[5].textContent])")
    assert len(rows) == 10 and {r[2] for r in rows} == {"succeeded"} and {r[1] for r in rows} == {"pager"}
    assert all(r[3].endswith(" s") for r in rows)  # each job's duration_seconds
    assert [r[0] for r in rows] == service["pager"][::-1]  # newest first
    assert query(page) == {"job": service["a"], "status": "succeeded", "limit": "10"}
    assert page.is_disabled("#prev") and not page.is_disabled("#next")
    assert hidden_cells(page) == []  # every model's jobs, with the model column, still fit 1280x800
    screenshot(page, "dashboard_all_jobs_1280x800.png")

    page.click("#next")
    page.wait_for_function("document.getElementById('page-info').textContent === '11-12 of 12'", timeout=DEADLINE)
    older = page.eval_on_selector_all("#jobs tr", "rows => rows.map(r => r.dataset.job)")
    assert older == [service["b"], service["a"]] and page.inner_text("#jobs").count("clf") == 2 and query(page)["offset"] == "10" and page.is_disabled("#next")

    page.select_option("#f-model", "pager")
    page.wait_for_function("document.getElementById('page-info').textContent === '1-10 of 10'", timeout=DEADLINE)
    page.select_option("#f-kind", "search")
    page.wait_for_function("document.getElementById('jobs').textContent.includes('no jobs match')", timeout=DEADLINE)
    assert query(page) == {"model": "pager", "job": service["a"], "status": "succeeded", "kind": "search", "limit": "10"}


def test_restore_makes_a_version_equal_to_the_old_one_and_a_read_key_sees_it_disabled_with_the_scope_needed(service, page):
    http = service["http"]
    http.post(f"/jobs/{service['running']}/cancel")  # restore answers 409 while a job trains the model
    wait_job(http, service["running"])
    versions = http.get("/models/clf/versions").json()["data"]
    kept = next(v["version"] for v in versions if v["job_id"] == service["a"])
    open_page(page, f"{service['url']}/dashboard?model=clf&job={service['a']}")
    page.wait_for_selector(f"#versions tr[data-version='{kept}'] button.restore", timeout=DEADLINE)
    assert page.inner_text(f"#versions tr[data-version='{kept}']").startswith(f"v{kept}")
    assert "accuracy" in page.inner_text(f"#versions tr[data-version='{kept}']")
    assert page.locator(f"#versions tr[data-version='{versions[0]['version']}'] button").count() == 0  # the current one
    assert page.inner_text("#whoami") == "key ops, scope admin"
    restore = page.locator(f"#versions tr[data-version='{kept}'] button.restore")
    assert restore.is_enabled() and restore.get_attribute("title") == f"make a new version equal to v{kept}"
    restore.click()
    page.wait_for_function("document.getElementById('versions-msg').textContent.includes('as its new version')", timeout=DEADLINE)
    new = http.get("/models/clf").json()["version"]
    assert f"as its new version v{new}" in page.inner_text("#versions-msg")
    page.wait_for_selector(f"#versions tr[data-version='{new}']:has-text('restore of v{kept}')", timeout=DEADLINE)

    inputs, _ = blobs(12)
    old = http.post(f"/models/clf/output?version={kept}", json={"inputs": inputs}).json()["outputs"]
    assert http.post("/models/clf/output", json={"inputs": inputs}).json()["outputs"] == old

    page.fill("#apikey", READER)  # a read key: restore and cancel are disabled, their titles name the scope needed
    page.dispatch_event("#apikey", "change")
    page.wait_for_selector(f"#versions tr[data-version='{kept}'] button.restore[disabled]", timeout=DEADLINE)
    assert page.inner_text("#whoami") == "key viewer, scope read"
    assert restore.get_attribute("title") == "needs an API key with scope 'admin'; this key (viewer) has scope 'read'"
    assert page.is_disabled("#cancel") and "needs an API key with scope 'train'" in page.get_attribute("#cancel", "title")
    assert restore.is_disabled() and http.get("/models/clf").json()["version"] == new  # a disabled button is not clickable
    screenshot(page, "dashboard_versions_read_key.png")


def test_long_ids_never_push_the_page_sideways(service, page):
    """A 64-character model id in every table, at 1024 and 1280 px: a table wider than its column scrolls inside
    its section, and the selects (model filter, compare with) fit theirs. Before, at 1024 px, the page itself
    scrolled sideways (1133 > 1024 px) and the compare select stuck out of the job's section."""
    http = service["http"]
    long_id = "m" * 40 + "-a-long-model-identifier-x"[:24]
    http.post("/models", json={"model_id": long_id, "layer_sizes": [2, 4, 3], "activations": ["relu", "softmax"],
                               "seed": 2}).raise_for_status()
    # a job waiting for samples: listed at once, with no worker needed (the one worker trains the running job)
    job = http.post(f"/models/{long_id}/training-jobs", json={"min_samples": 1000}).raise_for_status()
    for width in (1024, 1280):
        open_page(page, f"{service['url']}/dashboard?model={long_id}&job={job.json()['job_id']}",
                  viewport={"width": width, "height": 800})
        page.wait_for_selector(f"#jobs tr:has-text('{long_id[:20]}')", timeout=DEADLINE)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        sticking_out = page.evaluate("""() => [...document.querySelectorAll('main select')].filter(s => {
            const box = s.getBoundingClientRect(), section = s.closest('section').getBoundingClientRect();
            return box.right > section.right + 0.5; }).map(s => s.id)""")
        assert sticking_out == [], f"{width} px: {sticking_out}"
        screenshot(page, f"dashboard_long_ids_{width}.png")


def test_short_pages_of_large_models_and_jobs_are_all_reached(tmp_path, page):
    """A page holds fewer than its limit when more would pass NN_MAX_LIST_BYTES: the dashboard read one page of
    models, and its job pager added the limit to the offset, so models and jobs past the first page were never
    shown. Here every model's summary and every job's record is larger than the budget: one per page."""
    url, process = start_server(tmp_path, NN_MAX_LIST_BYTES="65536", NN_API_KEYS=f"ops:{ADMIN}:admin")
    try:
        http = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})
        names = [f"{i:03d}" + "n" * 197 for i in range(400)]  # 80 KB twice in a summary
        jobs = []
        for i in range(3):
            http.post("/models", json={"model_id": f"wide{i}", "layer_sizes": [2, 400], "activations": ["softmax"],
                                       "class_names": names}).raise_for_status()
            jobs.append(http.post(f"/models/wide{i}/training-jobs", json={  # 600 epochs of history: 90 KB a job
                "inputs": [[0, 0], [1, 1]], "targets": [0, 1], "epochs": 600}).raise_for_status().json())
        for job in jobs:
            assert wait_job(http, job["job_id"])["status"] == "succeeded"
        open_page(page, f"{url}/dashboard?job={jobs[0]['job_id']}")
        page.wait_for_function("document.getElementById('models').querySelectorAll('tr').length === 3", timeout=DEADLINE)
        assert http.get("/models").json()["next_offset"] == 1  # one model a page
        seen = []
        for n in range(3):
            page.wait_for_function(f"document.getElementById('page-info').textContent === '{n + 1}-{n + 1} of 3'",
                                   timeout=DEADLINE)
            seen += page.eval_on_selector_all("#jobs tr", "rows => rows.map(r => r.dataset.job)")
            if n < 2:
                page.click("#next")
        assert seen == [j["job_id"] for j in reversed(jobs)] and page.is_disabled("#next")
        # 400 classes: the confusion matrix is named, not drawn (spread into Math.max, its 160,000 cells overflowed
        # the stack and the page never became ready)
        assert "400 classes: too many to draw here" in page.inner_text("#matrix-on")
    finally:
        stop_server(process)


def test_a_followed_job_fetches_only_the_history_it_has_not_drawn(tmp_path, page):
    """At every new epoch the page fetched the job's whole history again: O(epochs) a fetch for each viewer of a
    long job. It asks for the entries after those it has (history_from) and appends them. A server of its own:
    the shared one's worker is busy with its own long job."""
    url, process = start_server(tmp_path, NN_API_KEYS=f"ops:{ADMIN}:admin")
    http = httpx.Client(base_url=url, timeout=10, headers={"Authorization": f"Bearer {ADMIN}"})
    http.post("/models", json={"model_id": "followed", "layer_sizes": [2, 8, 3], "activations": ["relu", "softmax"],
                               "seed": 2}).raise_for_status()
    inputs, targets = blobs(300)
    job_id = http.post("/models/followed/training-jobs", json={
        "inputs": inputs, "targets": targets, "epochs": 5000, "batch_size": 2}).raise_for_status().json()["job_id"]
    asked = []
    page.on("request", lambda request: asked.append(request.url) if f"/jobs/{job_id}?" in request.url else None)
    try:
        open_page(page, f"{url}/dashboard?job={job_id}")
        page.wait_for_function("state.history.length >= 3", timeout=DEADLINE)
        drawn = page.evaluate("state.history.length")
        page.wait_for_function(f"state.history.length > {drawn}", timeout=DEADLINE)  # a later fetch, from `drawn` on
        epochs = page.evaluate("state.history.map(h => h.epoch)")
        assert epochs == list(range(1, len(epochs) + 1))  # appended in order, none twice
        starts = [int(url.split("history_from=")[1]) for url in asked if "history_from=" in url]
        assert starts and max(starts) > 0, asked
    finally:
        http.post(f"/jobs/{job_id}/cancel")
        stop_server(process)
