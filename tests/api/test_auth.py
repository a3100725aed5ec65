"""Scopes and tenancy (api/auth.py) on real apps: every route the app has (so routes added later too) x every
scope x owner/other key, with tenancy on and off; bare keys and keyless services as before. Apps without workers."""

import re
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import allows, http_routes, is_open, parse_keys, required_scope
from api.errors import JobNotFound, ModelNotFound
from api.settings import Settings
from tests.api.conftest import IRIS, X4, Y3, running_app, settings_for
from tests.servers import start_server, stop_server

KEYS = {  # key -> (name, scope); alice's keys share her name, so each scope has an owner and an other
    "alice-read-key": ("alice", "read"), "alice-train-key": ("alice", "train"), "alice-admin-key": ("alice", "admin"),
    "bob-read-key": ("bob", "read"), "bob-train-key": ("bob", "train"), "root-admin-key": ("root", "admin"),
}
BARE = "bare-key-of-before"
API_KEYS = ",".join(f"{name}:{key}:{scope}" for key, (name, scope) in KEYS.items()) + f", {BARE}"
MODEL = "alices"


def h(key: str) -> dict:
    return {"X-API-Key": key}


def make_fixtures(client) -> str:
    """Alice's model (re-created after a DELETE) and her job on it; the job is cancelled, so its event stream ends."""
    if client.get(f"/models/{MODEL}", headers=h("root-admin-key")).status_code == 404:
        assert client.post("/models", json={**IRIS, "model_id": MODEL}, headers=h("alice-train-key")).status_code == 201
    job = client.post(f"/models/{MODEL}/training-jobs", json={"min_samples": 1000}, headers=h("alice-train-key")).json()
    assert client.post(f"/jobs/{job['job_id']}/cancel", headers=h("alice-train-key")).json()["status"] == "cancelled"
    return job["job_id"]


@pytest.fixture(scope="module", params=[True, False], ids=["tenancy", "no-tenancy"])
def secured(request, tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("data"), workers=0, api_keys=API_KEYS, tenancy=request.param) as client:
        client.tenancy = request.param
        yield client


def routes(app) -> list[tuple[str, str]]:
    """(method, path template) of every protected route of the app, whoever added it."""
    return sorted((method, route.path) for route in http_routes(app) if not is_open(route.path) for method in route.methods)


def fill(template: str, job_id: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1)
        return MODEL if name in ("model_id", "model_name") else job_id if name == "job_id" else "1"

    return re.sub(r"\{(\w+)(?::\w+)?\}", value, template)


def absent_detail(template: str, job_id: str) -> str | None:
    """The 404 a route answers when the model or job it names does not exist (None: it names neither)."""
    if "{job_id}" in template:
        return str(JobNotFound(job_id))
    if "{model_id}" in template or "{model_name}" in template:
        return str(ModelNotFound(MODEL))
    return None


# -- the matrix ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(KEYS) + [BARE])
def test_every_route_answers_each_scope_and_owner_as_the_table_says(secured, key):
    name, scope = KEYS.get(key, ("admin", "admin"))
    documented = secured.get("/openapi.json").json()["paths"]
    checked, wrong = 0, []
    for method, template in routes(secured.app):
        job_id = make_fixtures(secured)
        needed = required_scope(method, template, secured.tenancy)
        operation = documented.get(template, {}).get(method.lower())
        if operation is not None and operation["x-required-scope"] != needed:
            wrong.append(f"{method} {template}: documented {operation['x-required-scope']}, enforced {needed}")
        body = {} if method in ("POST", "PUT", "PATCH") else None
        response = secured.request(method, fill(template, job_id), json=body, headers=h(key))
        if method == "HEAD":  # no body to read the detail from: GET's, whose status it must have
            shown = secured.get(fill(template, job_id), headers=h(key))
            if response.status_code != shown.status_code:
                wrong.append(f"HEAD {template}: {response.status_code}, GET {shown.status_code}")
            response = shown
        answer = response.json() if "json" in response.headers.get("content-type", "") else {}
        detail = answer.get("detail", answer.get("error", ""))  # /v2 answers {"error"}
        hidden = secured.tenancy and scope != "admin" and name != "alice"
        absent = absent_detail(template, job_id)
        if not allows(scope, needed):
            if response.status_code != 403 or f"scope '{needed}'" not in detail or f"has scope '{scope}'" not in detail:
                wrong.append(f"{method} {template}: {scope} key, needs {needed}: {response.status_code} {detail}")
        elif hidden and absent is not None:
            if (response.status_code, detail) != (404, absent):
                wrong.append(f"{method} {template}: another name's {scope} key: {response.status_code} {detail}")
        elif response.status_code in (401, 403) or (response.status_code == 404 and detail == absent):
            wrong.append(f"{method} {template}: {name}'s {scope} key refused: {response.status_code} {detail}")
        checked += 1
    assert checked >= 20 and not wrong, "\n".join(wrong)


def test_the_table_gives_each_route_the_scope_the_issue_names():
    expected = {
        ("GET", "/models"): "read", ("GET", "/models/{model_id}"): "read", ("GET", "/jobs/{job_id}/events"): "read",
        ("POST", "/models/{model_id}/output"): "read", ("POST", "/models/{model_id}/evaluate"): "read",
        ("POST", "/v2/models/{model_name}/infer"): "read", ("HEAD", "/models/{model_id}/weights"): "read",
        ("POST", "/models"): "train", ("POST", "/models/{model_id}/samples"): "train",
        ("POST", "/models/{model_id}/training-jobs"): "train", ("POST", "/models/{model_id}/search-jobs"): "train",
        ("POST", "/datasets"): "train", ("POST", "/jobs/{job_id}/cancel"): "train",
        ("DELETE", "/models/{model_id}"): "admin", ("DELETE", "/datasets/{dataset_id}"): "admin",
        ("PUT", "/models/{model_id}/weights"): "admin", ("POST", "/models/import"): "admin",
        ("POST", "/models/{id}/versions/{v}/restore"): "admin", ("GET", "/jobs"): "read", ("GET", "/metrics"): "read",
        ("GET", "/auth/whoami"): "read",
    }
    assert {route: required_scope(*route) for route in expected} == expected
    assert required_scope("GET", "/metrics", tenancy=True) == "admin"  # it names every tenant's models
    assert required_scope("POST", None) == "train" and required_scope("GET", None) == "read"  # no route: by method


# -- who the caller is ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["alice-read-key", "bob-train-key", "root-admin-key", BARE])
def test_whoami_names_the_key_its_scope_and_each_operation_the_table_denies_it(secured, key):
    name, scope = KEYS.get(key, ("admin", "admin"))
    me = secured.get("/auth/whoami", headers=h(key))
    assert me.status_code == 200, me.text
    me = me.json()
    assert (me["name"], me["scope"], me["tenancy"], me["keys_required"]) == (name, scope, secured.tenancy, True)
    documented = secured.get("/openapi.json").json()["paths"]
    denied = {f"{method.upper()} {path}": operation["x-required-scope"] for path, operations in documented.items()
              for method, operation in operations.items()
              if "x-required-scope" in operation and not allows(scope, operation["x-required-scope"])}
    assert me["denied"] == denied  # the scopes /docs shows, which the matrix above checks are enforced
    restore, cancel = "POST /models/{model_id}/versions/{version}/restore", "POST /jobs/{job_id}/cancel"
    assert (me["denied"].get(restore), me["denied"].get(cancel)) == {
        "read": ("admin", "train"), "train": ("admin", None), "admin": (None, None)}[scope]
    assert "GET /auth/whoami" not in me["denied"] and "GET /models" not in me["denied"]


def test_whoami_needs_a_valid_key_and_without_keys_answers_full_access(secured, tmp_path):
    assert secured.get("/auth/whoami").status_code == 401
    assert secured.get("/auth/whoami", headers=h("not-a-key")).status_code == 401
    with running_app(tmp_path, workers=0) as client:
        assert client.get("/auth/whoami").json() == {
            "name": None, "scope": "admin", "tenancy": False, "keys_required": False, "denied": {}}


# -- keys ------------------------------------------------------------------------------------------------
def test_key_entries_bare_and_scoped():
    keys = parse_keys(" old-key , half:colon , ci:k:ey:train, alice:a1:read,alice:a2:admin ")
    assert [(k.name, k.key, k.scope) for k in keys] == [
        ("admin", b"old-key", "admin"), ("admin", b"half:colon", "admin"), ("ci", b"k:ey", "train"),
        ("alice", b"a1", "read"), ("alice", b"a2", "admin")]


@pytest.mark.parametrize("value, message", [
    ("alice:k:write", "entry 1: its scope, after the last colon, is not one of read, train, admin"),
    ("ok-key, :k:read", "entry 2: its name, before the first colon, is not 1-64"), ("a b:k:read", "entry 1: its name"),
    ("alice::train", "entry 1 has an empty key"), ("a:same:read,b:same:train", "same key twice"),
    # a bare key with two colons reads as name:key:scope: its ends were printed as a name and a scope
    ("alice:ok-key:read,sk_live:9f3b2c:Zq81XkP0aa", "entry 2: its scope"), ("ab+/cd:9f3b:Zq81", "entry 1: its name"),
])
def test_a_malformed_entry_stops_the_service_and_names_it_without_the_key(tmp_path, value, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        create_app(settings_for(tmp_path, workers=0, api_keys=value))
    shown = str(error.value).replace("same key", "")
    parts = {p for entry in value.split(",") for p in entry.strip().split(":") if len(p) >= 4}
    for part in parts - {"read", "train", "admin"}:
        assert part not in shown, part  # no part of an entry is shown: any may be a piece of a key


def test_tenancy_needs_keys(tmp_path):
    with pytest.raises(ValueError, match="NN_TENANCY=true needs NN_API_KEYS"):
        create_app(settings_for(tmp_path, workers=0, tenancy=True))


def test_a_bare_key_alone_keeps_full_access_as_before(tmp_path):
    with running_app(tmp_path, workers=0, api_keys=BARE, tenancy=True) as client:
        model = client.post("/models", json=IRIS, headers=h(BARE)).json()
        assert model["owner"] == "admin"
        assert client.put("/models/iris/weights", json={"layers": []}, headers=h(BARE)).status_code == 422  # let in
        assert client.delete("/models/iris", headers=h(BARE)).status_code == 204


def test_without_keys_every_route_is_open_and_records_have_no_owner(tmp_path):
    with running_app(tmp_path, workers=0) as client:
        for method, template in routes(client.app):
            job_id = "nope"
            response = client.request(method, fill(template, job_id), json={} if method in ("POST", "PUT") else None)
            assert response.status_code not in (401, 403), (method, template, response.text)
        assert client.post("/models", json={**IRIS, "model_id": "free"}).json()["owner"] is None
        schema = client.get("/openapi.json").json()
        assert schema["paths"]["/models"]["post"]["x-required-scope"] == "train"
        assert "security" not in schema["paths"]["/models"]["post"] and "403" not in schema["paths"]["/models"]["post"]["responses"]


# -- scopes ----------------------------------------------------------------------------------------------
def test_403_comes_before_the_body_is_read(secured):
    received = []

    def body():
        for _ in range(1000):
            received.append(1)
            yield b"x" * 65536

    response = secured.post(f"/models/{MODEL}/samples", content=body(), headers=h("alice-read-key"))
    assert response.status_code == 403 and len(received) <= 2
    assert response.json()["detail"] == (
        "POST /models/{model_id}/samples needs an API key with scope 'train'; this key ('alice') has scope 'read'. "
        "Use a key with scope 'train' or 'admin' (NN_API_KEYS entries are name:key:scope)")


def test_head_answers_as_get_does_on_every_get_route(secured):
    """FastAPI's routes answered HEAD with 405 (Starlette's answer it), though the table gives HEAD the read scope and
    load balancers probe `HEAD /health`: now every GET route answers HEAD with GET's status and headers, no body."""
    job_id = make_fixtures(secured)
    gets = [template for method, template in routes(secured.app) if method == "GET"] + ["/health", "/openapi.json"]
    for template in gets:
        path = fill(template, job_id)
        if path.endswith("/events"):  # run as a GET, a prober's HEAD held a stream slot (NN_MAX_STREAMS) open
            assert secured.head(path, headers=h("alice-read-key")).status_code == 405, path
            continue
        head, get = secured.head(path, headers=h("alice-read-key")), secured.get(path, headers=h("alice-read-key"))
        assert (head.status_code, head.headers.get("content-type")) == (get.status_code, get.headers.get("content-type")), path
        assert head.status_code != 405 and head.content == b"", path
    assert secured.head("/models").status_code == 401  # a read as any other: the key is checked


def test_metrics_count_a_head_and_a_refusal_under_their_route(secured):
    """HEAD ran on a copy of the request scope and refusals were answered before routing, so /metrics filed load
    balancers' HEAD /health probes and every 401, 403 and tenancy 404 under route="unmatched"."""
    def count(method, route, status) -> float:
        text = secured.get("/metrics", headers=h("root-admin-key")).text
        line = f'nn_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
        return sum(float(row.split(" ")[-1]) for row in text.splitlines() if row.startswith(line))

    make_fixtures(secured)
    cases = [("HEAD", "/health", {}, 200), ("HEAD", "/models/{model_id}", h("alice-read-key"), 200),
             ("GET", "/models/{model_id}", {}, 401), ("DELETE", "/models/{model_id}", h("alice-read-key"), 403)]
    if secured.tenancy:
        cases.append(("GET", "/models/{model_id}", h("bob-train-key"), 404))  # alice's model, to bob
    for method, route, headers, status in cases:
        before = count(method, route, status)
        path = route.replace("{model_id}", MODEL)
        assert secured.request(method, path, headers=headers).status_code == status, (method, path)
        assert count(method, route, status) == before + 1, (method, route, status)

@pytest.mark.parametrize("key", ["alice-read-key", "bob-train-key", "root-admin-key"])
def test_a_method_no_route_of_the_path_takes_is_405_for_every_key(secured, key):
    """A read key's PATCH or OPTIONS (no preflight) got a 403 asking for a train key, which got a 405."""
    for method, path, allowed in (("PATCH", "/models", {"GET", "POST"}), ("OPTIONS", f"/models/{MODEL}", None),
                                  ("PUT", "/jobs", {"GET"})):
        response = secured.request(method, path, headers=h(key))
        assert response.status_code == 405, (method, path, response.text)
        if allowed is not None:
            assert set(response.headers["allow"].split(", ")) == allowed
    assert secured.request("PATCH", "/models").status_code == 401  # no key: refused before anything is said


def test_docs_show_each_operations_scope(secured):
    schema = secured.get("/openapi.json").json()
    output = schema["paths"]["/models/{model_id}/output"]["post"]
    assert output["x-required-scope"] == "read" and "API key scope: `read`" in output["description"]
    assert output["responses"]["403"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorDetail"}
    assert schema["paths"]["/models/{model_id}"]["delete"]["x-required-scope"] == "admin"
    assert schema["paths"]["/models/{model_id}/weights"]["put"]["x-required-scope"] == "admin"
    assert schema["paths"]["/metrics"]["get"]["x-required-scope"] == ("admin" if secured.tenancy else "read")
    assert "x-required-scope" not in schema["paths"]["/health"]["get"]


# -- tenancy ----------------------------------------------------------------------------------------------
def test_cancel_own_jobs(secured):
    def job(key: str) -> str:
        made = secured.post(f"/models/{MODEL}/training-jobs", json={"min_samples": 1000}, headers=h(key))
        assert made.status_code == 202, made.text
        return made.json()["job_id"]

    make_fixtures(secured)
    assert secured.post(f"/jobs/{job('alice-train-key')}/cancel", headers=h("alice-train-key")).status_code == 200
    others = secured.post(f"/jobs/{job('alice-train-key')}/cancel", headers=h("bob-train-key"))
    assert others.status_code == (404 if secured.tenancy else 200)  # without tenancy a train key cancels any job
    assert secured.post(f"/jobs/{job('alice-train-key')}/cancel", headers=h("alice-read-key")).status_code == 403
    assert secured.post(f"/jobs/{job('alice-train-key')}/cancel", headers=h("root-admin-key")).status_code == 200


@pytest.fixture(params=["sqlite", "redis"])
def tenant_app(request, tmp_path):
    overrides = {"workers": 0, "api_keys": API_KEYS, "tenancy": True}
    if request.param == "redis":
        from tests.api.storage.test_store_contract import REDIS_URL, redis_available

        if not redis_available():
            pytest.skip(f"no Redis at {REDIS_URL}")
        overrides.update(backend="redis", redis_url=REDIS_URL, redis_prefix=f"test-{uuid.uuid4().hex[:8]}")
    app = create_app(settings_for(tmp_path, **overrides))
    with TestClient(app) as client:
        yield client
    if request.param == "redis":
        app.state.service.store.reset()


def test_lists_hold_only_what_the_key_sees_with_totals_to_match(tenant_app):
    client = tenant_app
    for model_id, key in [("a1", "alice-train-key"), ("b1", "bob-train-key"), ("a2", "alice-train-key"),
                          ("r1", "root-admin-key"), ("a3", "alice-train-key")]:
        assert client.post("/models", json={**IRIS, "model_id": model_id}, headers=h(key)).json()["owner"] == key.split("-")[0]

    def models(key: str, **query) -> tuple[list[str], int]:
        page = client.get("/models", params=query, headers=h(key)).json()
        return [m["model_id"] for m in page["data"]], page["count"]

    assert models("alice-read-key") == (["a1", "a2", "a3"], 3)  # the name's read key sees the name's models
    assert models("alice-train-key", offset=1, limit=1) == (["a2"], 3)
    assert models("bob-read-key") == (["b1"], 1)
    assert models("root-admin-key") == (["a1", "b1", "a2", "r1", "a3"], 5) == models("alice-admin-key")

    submitted = {key: client.post("/models/a1/training-jobs", json={"min_samples": 1000}, headers=h(key)).json()["job_id"]
                 for key in ("alice-train-key", "root-admin-key")}
    samples = client.post("/models/a1/samples", json={"inputs": X4, "targets": Y3}, headers=h("alice-train-key"))
    assert samples.json()["buffer_size"] == 6
    mine = client.get("/models/a1/jobs", headers=h("alice-read-key")).json()
    assert [j["job_id"] for j in mine["data"]] == [submitted["alice-train-key"]] and mine["count"] == 1
    assert client.get("/models/a1/jobs", headers=h("root-admin-key")).json()["count"] == 2
    every = client.get("/jobs", params={"model_id": "a1"}, headers=h("alice-train-key")).json()  # GET /jobs too
    assert [j["job_id"] for j in every["data"]] == [submitted["alice-train-key"]] and every["count"] == 1
    assert client.get("/jobs", headers=h("bob-read-key")).json()["count"] == 0
    assert client.get("/jobs", headers=h("root-admin-key")).json()["count"] == 2
    assert client.get("/models/a1/progress", headers=h("alice-read-key")).json()["job_id"] == submitted["alice-train-key"]
    assert client.get(f"/jobs/{submitted['root-admin-key']}", headers=h("alice-train-key")).status_code == 404
    assert client.get("/models/a1/jobs", headers=h("bob-train-key")).status_code == 404
    assert client.post("/models/a1/output", json={"inputs": X4}, headers=h("bob-read-key")).status_code == 404
    assert client.post("/models/a1/output", json={"inputs": X4}, headers=h("alice-read-key")).status_code == 200


def test_a_models_latest_job_is_one_the_key_may_open(tenant_app):
    """Jobs belong to who submitted them: latest_job (GET /models/{id}, GET /models, the dashboard) shows a tenant
    its own latest job on the model, never one it would get a 404 for; an admin key sees the model's latest."""
    client = tenant_app
    for model_id in ("a1", "a2"):
        assert client.post("/models", json={**IRIS, "model_id": model_id}, headers=h("alice-train-key")).status_code == 201

    def submit(model_id: str, key: str) -> str:
        made = client.post(f"/models/{model_id}/training-jobs", json={"min_samples": 1000}, headers=h(key))
        assert made.status_code == 202, made.text
        return made.json()["job_id"]

    alices, roots = submit("a1", "alice-train-key"), submit("a1", "root-admin-key")  # the admin's is the newest
    only_roots = submit("a2", "root-admin-key")

    def latest(key: str) -> dict:
        one = {m: client.get(f"/models/{m}", headers=h(key)).json()["latest_job"] for m in ("a1", "a2")}
        listed = {m["model_id"]: m["latest_job"] for m in client.get("/models", headers=h(key)).json()["data"]}
        assert one == listed
        return {m: job and job["job_id"] for m, job in one.items()}

    assert latest("alice-read-key") == {"a1": alices, "a2": None}
    assert latest("root-admin-key") == {"a1": roots, "a2": only_roots} == latest("alice-admin-key")
    assert client.get(f"/jobs/{alices}", headers=h("alice-read-key")).status_code == 200
    assert client.get(f"/jobs/{roots}", headers=h("alice-read-key")).status_code == 404  # as before
    assert client.get("/models/a1/progress", headers=h("alice-read-key")).json()["job_id"] == alices


def test_an_append_shows_only_the_queued_jobs_the_key_may_open(tenant_app):
    """`queued_jobs` of an append listed every job it queued: alice's append showed her the admin's job id, which is a
    404 to her."""
    client = tenant_app
    assert client.post("/models", json={**IRIS, "model_id": "a1"}, headers=h("alice-train-key")).status_code == 201
    csv = "a,b,c,d,y\n" + "".join(",".join(map(str, [*row, y])) + "\n" for row, y in zip(X4, Y3))
    appends = {"json": {"json": {"inputs": X4, "targets": Y3}}, "file": {"content": csv, "headers": {"Content-Type": "text/csv"}}}
    for body in appends.values():
        for key, shown in (("root-admin-key", False), ("alice-train-key", True)):
            job = client.post("/models/a1/training-jobs", json={"min_samples": 2}, headers=h(key)).json()["job_id"]
            appended = client.post("/models/a1/samples", **{**body, "headers": {**body.get("headers", {}), **h("alice-train-key")}})
            assert appended.json()["queued_jobs"] == ([job] if shown else []), appended.text
            assert client.get(f"/jobs/{job}", headers=h(key)).json()["status"] == "queued"


def test_a_real_server_with_scoped_keys_from_the_environment(tmp_path):
    url, process = start_server(tmp_path, NN_API_KEYS=API_KEYS, NN_TENANCY="true", NN_WORKERS="0")
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            assert http.post("/models", json=IRIS, headers=h("alice-read-key")).status_code == 403
            assert http.post("/models", json=IRIS, headers={"Authorization": "Bearer alice-train-key"}).status_code == 201
            assert http.get("/models/iris", headers=h("bob-train-key")).status_code == 404
            assert http.get("/models", headers=h("bob-train-key")).json()["count"] == 0
            assert http.delete("/models/iris", headers=h("alice-train-key")).status_code == 403
            assert http.delete("/models/iris", headers=h("root-admin-key")).status_code == 204
            assert http.get("/metrics", headers=h("alice-read-key")).status_code == 403
            probe, listed = http.head("/health"), http.head("/models", headers=h("bob-read-key"))  # uvicorn sends no body
            assert (probe.status_code, probe.content, listed.status_code, listed.content) == (200, b"", 200, b"")
            assert int(listed.headers["content-length"]) == len(http.get("/models", headers=h("bob-read-key")).content)
    finally:
        stop_server(process)
