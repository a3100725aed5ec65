"""Access control (API keys, CORS), every class of bad input (a 4xx that says why, never a 500),
and ETags with conditional requests. Apps without workers: nothing here trains."""

import logging

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from client import Client
from tests.api.conftest import IRIS, X4, running_app, settings_for

KEY, OTHER_KEY = "s3cret-key-1", "s3cret-key-2"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("data"), workers=0, api_keys=f" {KEY}, {OTHER_KEY} ") as client:
        assert client.post("/models", json=IRIS, headers={"Authorization": f"Bearer {KEY}"}).status_code == 201
        yield client


@pytest.fixture(scope="module")
def idle(tmp_path_factory):
    """No keys, no workers, raising no server exceptions, so a 500 would show as a 500."""
    app = create_app(settings_for(tmp_path_factory.mktemp("data"), workers=0, max_request_bytes=4096))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/models", json=IRIS).status_code == 201
        yield client


# -- access control ------------------------------------------------------------------
PROTECTED = [("get", "/models"), ("get", "/models/iris"), ("post", "/models/iris/output"), ("get", "/models/iris/weights"),
             ("post", "/models/iris/samples"), ("post", "/models/iris/training-jobs"), ("get", "/jobs/x"),
             ("get", "/jobs/x/events"), ("get", "/models/iris/export"), ("get", "/metrics"), ("get", "/nowhere")]


@pytest.mark.parametrize("method, path", PROTECTED)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer "}])
def test_a_missing_or_wrong_key_is_401_with_a_challenge(secured, method, path, headers):
    response = secured.request(method.upper(), path, headers=headers, json={"inputs": X4} if method == "post" else None)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "API key" in response.json()["detail"]


@pytest.mark.parametrize("headers", [{"Authorization": f"Bearer {KEY}"}, {"Authorization": f"bearer {OTHER_KEY}"},
                                     {"X-API-Key": KEY}])
def test_a_valid_key_in_either_header_is_let_in(secured, headers):
    assert secured.get("/models/iris", headers=headers).status_code == 200
    assert secured.post("/models/iris/output", json={"inputs": X4}, headers=headers).status_code == 200
    assert secured.get("/jobs/nope/events", headers=headers).status_code == 404  # the event stream is behind the key too


@pytest.mark.parametrize("path", ["/health", "/docs", "/redoc", "/openapi.json", "/dashboard", "/favicon.svg",
                                  "/favicon.ico"])  # browsers ask for it on their own: a 401 was an error in their console
def test_health_docs_and_the_dashboard_page_need_no_key(secured, path):
    assert secured.get(path).status_code == 200


def test_offline_doc_assets_need_no_key(secured):
    script = secured.get("/docs").text.split('src="', 1)[1].split('"', 1)[0]
    assert secured.get(script).status_code == 200


def test_a_body_without_a_key_is_refused_before_it_is_read(secured):
    received = []

    def body():
        for _ in range(1000):
            received.append(1)
            yield b"x" * 65536

    response = secured.post("/models/iris/samples", content=body())
    assert response.status_code == 401 and len(received) <= 2


def test_swagger_offers_authorize_and_errors_are_documented(secured):
    schema = secured.get("/openapi.json").json()
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "apiKey"}
    output = schema["paths"]["/models/{model_id}/output"]["post"]
    assert output["security"] == [{"bearer": []}, {"apiKey": []}]
    assert {"401", "404", "413", "422", "503"} <= set(output["responses"])
    assert "security" not in schema["paths"]["/health"]["get"]


def test_keys_are_never_logged(secured, caplog):
    with caplog.at_level(logging.DEBUG):
        secured.get("/models", headers={"Authorization": f"Bearer {KEY}-typo"})
        secured.get("/models", headers={"Authorization": f"Bearer {KEY}"})
    assert caplog.records and KEY not in caplog.text


def test_the_python_client_sends_the_key(secured):
    with Client("http://testserver", api_key=KEY, transport=secured._transport) as api:
        assert api.get_model("iris")["model_id"] == "iris"


def test_without_keys_everything_is_open_and_cors_is_off(idle):
    response = idle.get("/models", headers={"Origin": "https://elsewhere.example"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers
    assert "securitySchemes" not in idle.get("/openapi.json").json()["components"]


def test_cors_when_configured(tmp_path):
    with running_app(tmp_path, workers=0, api_keys=KEY, cors_origins="https://app.example") as client:
        preflight = client.options("/models", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "GET",
                                                       "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        refused = client.get("/models", headers={"Origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "https://app.example"
        other = client.options("/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in other.headers
        # refused preflights were text/plain; V2's binary and gzip headers were refused to every browser
        assert other.status_code == 400 and other.json()["detail"].startswith(
            "Disallowed CORS origin: this service allows origins https://app.example (NN_CORS_ORIGINS), request headers ")
        v2 = client.options("/v2/models/m/infer", headers={
            "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,inference-header-content-length,content-encoding,x-api-key"})
        assert v2.status_code == 200, v2.text
        answered = client.get("/models", headers={"Origin": "https://app.example", "X-API-Key": KEY.split(",")[0]})
        assert "inference-header-content-length" in answered.headers["access-control-expose-headers"].lower()


# -- bad input: a 4xx that says what was wrong, never a 500 ------------------------------
def raw(client, path, body: bytes, content_type="application/json"):
    return client.post(path, content=body, headers={"Content-Type": content_type})


BAD_BODIES = {
    "malformed JSON": (b'{"inputs": [[1, 2', "JSON"),
    "not UTF-8": (b'\xff\xfe{"inputs": 1}', ""),
    "not JSON at all": (b"inputs=1,2,3,4", ""),
    "a list, not an object": (b"[[1, 2, 3, 4]]", "send a JSON object with Content-Type: application/json"),
    "NaN": (b'{"inputs": [[NaN, 1, 2, 3]]}', "finite"),
    "Infinity": (b'{"inputs": [[Infinity, 1, 2, 3]]}', "finite"),
    "a number too large for a double": (b'{"inputs": [[1e400, 1, 2, 3]]}', "finite"),
    "too large for float32": (b'{"inputs": [[1e39, 1, 2, 3]]}', "too large"),
    "a string where a number belongs": (b'{"inputs": [["1", 2, 3, 4]]}', "number"),
    "a boolean where a number belongs": (b'{"inputs": [[true, 2, 3, 4]]}', "number"),
    "wrong type": (b'{"inputs": "1, 2, 3, 4"}', "list"),
    "ragged rows": (b'{"inputs": [[1, 2, 3, 4], [1, 2]]}', "inputs[1] has 2 values"),
    "empty batch": (b'{"inputs": []}', "no samples"),
    "empty row": (b'{"inputs": [[]]}', "0 values"),
    "unknown field": (b'{"inputs": [[1, 2, 3, 4]], "temperature": 2}', "unknown field"),
    "targets that do not fit": (b'{"inputs": [[1, 2, 3, 4]], "targets": [7]}', "[0, 2]"),
    "fewer targets than inputs": (b'{"inputs": [[1, 2, 3, 4], [1, 2, 3, 4]], "targets": [0]}', "one target per input"),
}


@pytest.mark.parametrize("name", BAD_BODIES)
def test_bad_outputs_bodies_are_422_with_a_reason(idle, name):
    body, words = BAD_BODIES[name]
    response = raw(idle, "/models/iris/output", body)
    assert response.status_code == 422, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize("path, body, words", [
    ("/models/iris/samples", {"inputs": [], "targets": []}, "at least 1"),
    ("/models/iris/samples", {"inputs": [[1, 2, 3]], "targets": [0]}, "expects 4"),
    ("/models/iris/evaluate", {"inputs": [[1, 2, 3, 4]], "targets": [[0.5, 0.5]]}, "3 outputs"),
    ("/models/iris/training-jobs", {"epochs": -1}, "greater than or equal to 1"),
    ("/models/iris/training-jobs", {"epochs": 10**9}, "NN_MAX_EPOCHS"),
    ("/models/iris/training-jobs", {"epochs": "10"}, "epochs: expected a whole number; received the text '10'; send numbers without quotes"),
    ("/models/iris/training-jobs", {"learning_rate": 0}, "greater than 0"),
    ("/models/iris/training-jobs", {"learning_rate": -0.1}, "greater than 0"),
    ("/models/iris/training-jobs", {"batch_size": 0}, "greater than or equal to 1"),
    ("/models/iris/training-jobs", {"l2": -1}, "greater than or equal to 0"),
    ("/models/iris/training-jobs", {"validation_split": 1.5}, "less than 1"),
    ("/models/iris/training-jobs", {"min_samples": 10**30}, "less than or equal to"),
    ("/models/iris/training-jobs", {"min_samples": 10**8}, "NN_MAX_BUFFER_SAMPLES"),
    ("/models/iris/training-jobs", {"optimizer": "adamx"}, "valid names"),
    ("/models/iris/training-jobs", {"schedule": "exponential", "decay_rate": 1e300}, "decay_rate"),
    ("/models/iris/training-jobs", {"dropout": [0.5, 0.5]}, "output layer"),
    ("/models/iris/training-jobs", {"shuffle": "yes"}, "shuffle: expected true or false"),
    ("/models", {"layer_sizes": [4, 10**30]}, "NN_MAX_LAYER_SIZE"),
    ("/models", {"layer_sizes": [4000, 4000, 4000]}, "NN_MAX_PARAMETERS"),  # more memory than the limit allows
    ("/models", {"layer_sizes": [4, 3], "dropout": 1e300}, "less than 1"),
    ("/models", {"layer_sizes": [4, 3], "dropout": -1}, "greater than or equal to 0"),
    ("/models", {"layer_sizes": [4, 3], "model_id": "../../etc/passwd"}, "model_id"),
    ("/models", {"layer_sizes": [4, 3], "model_id": "a/b"}, "model_id"),
    ("/models", {"layer_sizes": [4, 3.5]}, "layer_sizes[1]: expected a whole number; received 3.5"),
    ("/models", {"layer_sizes": [4, -3]}, "greater than or equal to 1"),
    ("/models/import?model_id=..%2Fx", None, "model_id"),
])
def test_bad_values_are_rejected_with_a_reason(idle, path, body, words):
    response = idle.post(path, json=body)
    assert 400 <= response.status_code < 500 and response.status_code != 404, response.text
    assert words in response.json()["detail"]


@pytest.mark.parametrize("path", ["/models/..%2F..%2Fetc%2Fpasswd", "/models/%00", "/models/a%2Fb/weights",
                                  "/jobs/..%2F..", "/models/" + "x" * 5000])
def test_model_and_job_ids_with_path_characters_are_just_unknown(idle, path):
    response = idle.get(path)
    assert response.status_code == 404, response.text


def test_huge_list_offsets_are_422_not_500(idle):
    assert idle.get("/models", params={"offset": 2**70}).status_code == 422
    assert idle.get("/models/iris/jobs", params={"offset": 2**70}).status_code == 422


def test_enormous_bodies_are_refused_before_reading(idle):
    assert raw(idle, "/models/iris/samples", b"x" * 5000).status_code == 413  # declared length over the limit

    def chunks():
        for _ in range(1000):
            yield b"[1.0, 2.0, 3.0, 4.0], " * 100

    response = idle.post("/models/iris/samples", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "NN_MAX_REQUEST_BYTES" in response.json()["detail"]


def test_conditional_requests_compare_tags_as_rfc_9110_says(idle):
    """If-Match compares strongly: a weak tag replaced the weights. A kept version's weights (?version=, or
    /versions/{v}/weights) never change, yet sending their ETag back was a 200 (one route sent none)."""
    idle.post("/models", json={**IRIS, "model_id": "conditional"})
    weights = idle.get("/models/conditional/weights")
    tag, layers = weights.headers["etag"], weights.json()["layers"]
    weak = idle.put("/models/conditional/weights", json={"layers": layers}, headers={"If-Match": f"W/{tag}"})
    assert weak.status_code == 412 and idle.get("/models/conditional").json()["version"] == 1
    assert idle.get("/models/conditional/weights", headers={"If-None-Match": f"W/{tag}"}).status_code == 304  # weak: equal
    assert idle.put("/models/conditional/weights", json={"layers": layers}, headers={"If-Match": tag}).status_code == 200
    for path in ("/models/conditional/weights?version=1", "/models/conditional/versions/1/weights"):
        kept = idle.get(path)
        assert kept.status_code == 200 and kept.json()["version"] == 1 and kept.headers["etag"] == tag, path
        cached = idle.get(path, headers={"If-None-Match": tag})
        assert (cached.status_code, cached.headers["etag"], cached.content) == (304, tag, b""), path
        assert idle.get(path, headers={"If-None-Match": idle.get("/models/conditional/weights").headers["etag"]}).status_code == 200
    documented = idle.get("/openapi.json").json()["paths"]
    assert "304" in documented["/models/{model_id}/versions/{version}/weights"]["get"]["responses"]


def test_a_version_asked_for_is_served_though_a_newer_one_came_in_since_its_stamp(idle):
    """?version=N, N current when the request read the model's stamp, and a newer version committed before the
    network was loaded: the newer one was served (a Redis race: 19-30 of 600 reads) under `"version": N+2`."""
    idle.post("/models", json={**IRIS, "model_id": "raced"})
    first = idle.get("/models/raced/weights").json()
    layers = [{**layer, "weights": [[w + 1 for w in row] for row in layer["weights"]]} for layer in first["layers"]]
    idle.put("/models/raced/weights", json={"layers": layers})
    store = idle.app.state.service.store
    uid = store.model_stamp("raced")[0]
    stale = store.model_stamp
    store.model_stamp = lambda model_id: (uid, 1)  # read before the PUT; the network loaded after it
    idle.app.state.service.models.cache.discard("raced")  # not cached yet: loaded, as the current one
    try:
        served = idle.get("/models/raced/weights", params={"version": 1}).json()
        idle.app.state.service.models.cache.discard("raced")
        output = idle.post("/models/raced/output", params={"version": 1}, json={"inputs": X4}).json()
    finally:
        store.model_stamp = stale
    assert served == first and output["model_version"] == 1


def test_405_lists_every_method_of_the_path(idle):
    response = idle.patch("/models/iris")
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "DELETE"}


# -- ETags -------------------------------------------------------------------------------------
def test_model_reads_carry_an_etag_and_answer_304(idle):
    idle.post("/models", json={**IRIS, "model_id": "tagged"})
    first = idle.get("/models/tagged")
    tag = first.headers["etag"]
    assert tag.startswith('"tagged.') and first.json()["version"] == 1
    assert idle.get("/models/tagged", headers={"If-None-Match": tag}).status_code == 304
    weights = idle.get("/models/tagged/weights")
    assert weights.headers["etag"] != tag
    assert idle.get("/models/tagged/weights", headers={"If-None-Match": weights.headers["etag"]}).status_code == 304

    put = idle.put("/models/tagged/weights", json={"layers": weights.json()["layers"]}, headers={"If-Match": tag})
    assert put.status_code == 200 and put.json()["version"] == 2 and put.headers["etag"] != tag
    stale = idle.put("/models/tagged/weights", json={"layers": weights.json()["layers"]}, headers={"If-Match": tag})
    assert stale.status_code == 412 and "GET it again" in stale.json()["detail"]
    now = idle.get("/models/tagged").headers["etag"], idle.get("/models/tagged/weights").headers["etag"]
    assert f"at its current version 2 ({now[1]} from its weights, or the ETag of GET /models/tagged)" in stale.json()["detail"]
    assert idle.put("/models/tagged/weights", json={"layers": weights.json()["layers"]},
                    headers={"If-Match": now[0]}).status_code == 200  # the summary's ETag, whatever its state
    assert idle.put("/models/tagged/weights", json={"layers": weights.json()["layers"]},
                    headers={"If-Match": idle.get("/models/tagged/weights").headers["etag"]}).status_code == 200
    assert idle.get("/models/tagged", headers={"If-None-Match": tag}).status_code == 200

    # what the summary shows besides the weights changes its ETag: it was a 304 with a stale buffer size
    before = idle.get("/models/tagged").headers["etag"]
    idle.post("/models/tagged/samples", json={"inputs": [[1, 2, 3, 4]], "targets": [0]})
    after = idle.get("/models/tagged", headers={"If-None-Match": before})
    assert after.status_code == 200 and after.json()["buffer_size"] == 1 and after.headers["etag"] != before
    assert idle.get("/models/tagged", headers={"If-None-Match": after.headers["etag"]}).status_code == 304
    # the summary's tag names another representation: the weights' 304 carried a tag other than the one sent
    assert idle.get("/models/tagged/weights", headers={"If-None-Match": before}).status_code == 200

    idle.delete("/models/tagged")  # a re-created namesake at version 1 has another ETag
    idle.post("/models", json={**IRIS, "model_id": "tagged"})
    assert idle.get("/models/tagged").headers["etag"] != tag
