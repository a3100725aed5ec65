"""JSON bodies (api/json_body.py): bounded before any Python object is built, parsed by orjson and
validated off the event loop, with messages that say what to send; JSON responses by orjson."""

import math

import numpy as np
import orjson
import pytest
from fastapi.exceptions import RequestValidationError
from fastapi.params import Form
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from api import json_body
from api.app import create_app
from api.errors import InvalidInput
from api.json_body import BodyScan, JsonBodyRoute, OrjsonResponse, nesting_depth
from tests.api.conftest import IRIS, X4, settings_for

SEND_JSON = "send a JSON object with Content-Type: application/json"


@pytest.fixture(scope="module")
def app_client(tmp_path_factory):
    app = create_app(settings_for(tmp_path_factory.mktemp("data"), workers=0, max_samples_per_request=100))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.post("/models", json=IRIS).status_code == 201
        yield client


def one_value_rows(n: int) -> bytes:
    return b'{"inputs": [' + b"[0]," * (n - 1) + b"[0]]}"


@pytest.fixture
def parses(monkeypatch):
    """Counts the bodies that reach a JSON parser: orjson, or simdjson for numeric rows (when it reads them)."""
    calls = []
    real, real_numeric = orjson.loads, json_body.numeric_body

    def counting(data):
        calls.append(len(data))
        return real(data)

    def counting_numeric(body, *args):
        parsed = real_numeric(body, *args)
        if parsed is not None:
            calls.append(len(body))
        return parsed

    monkeypatch.setattr(json_body.orjson, "loads", counting)
    monkeypatch.setattr(json_body, "numeric_body", counting_numeric)
    return calls


@pytest.mark.parametrize("path", ["/models/iris/output", "/models/iris/samples", "/models/nowhere/output"])
def test_many_rows_are_refused_by_the_byte_scan_before_parsing(app_client, parses, path):
    response = app_client.post(path, content=one_value_rows(50_000), headers={"Content-Type": "application/json"})
    assert response.status_code == 413, response.text
    detail = response.json()["detail"]
    assert "NN_MAX_SAMPLES_PER_REQUEST" in detail and "JSON arrays and objects" in detail
    assert parses == []  # refused while reading: no Python object was built, even for a model that does not exist


def test_many_strings_are_refused_by_the_byte_scan_before_parsing(app_client, parses):
    body = b'{"inputs": [[' + b'"a",' * 20_000 + b'"a"]]}'
    response = app_client.post("/models/iris/output", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413 and "strings" in response.json()["detail"] and parses == []


def test_a_million_wrong_values_are_refused_or_one_error_not_a_million(app_client, parses):
    trues = app_client.post("/models/iris/output", content=b'{"inputs": [[' + b"true," * 300_000 + b"true]]}",
                            headers={"Content-Type": "application/json"})
    assert trues.status_code == 413 and "true/false/null" in trues.json()["detail"] and parses == []
    zeros = app_client.post("/models", content=b'{"layer_sizes": [' + b"0," * 300_000 + b"0]}",
                            headers={"Content-Type": "application/json"})
    assert zeros.status_code == 422 and len(zeros.json()["errors"]) == 1, zeros.text[:300]


def test_bodies_within_the_limit_are_parsed_and_answered(app_client, parses):
    response = app_client.post("/models/iris/output", json={"inputs": X4 * 16})
    assert response.status_code == 200 and len(response.json()["outputs"]) == 96 and len(parses) == 1


def test_weights_bodies_have_their_own_row_limit(app_client):
    weights = app_client.get("/models/iris/weights").json()  # 4 + 8 rows: over nothing, under the layer limit
    assert app_client.put("/models/iris/weights", json={"layers": weights["layers"]}).status_code == 200


def test_deep_nesting_is_refused(app_client, parses):
    body = b'{"inputs": ' + b"[" * 60 + b"]" * 60 + b"}"
    response = app_client.post("/models/iris/output", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "NN_MAX_JSON_DEPTH" in response.json()["detail"]
    assert parses == []


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_says_what_to_send(app_client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = app_client.post("/models/iris/output", content=orjson.dumps({"inputs": X4}), headers=headers)
    assert response.status_code == 422 and SEND_JSON in response.json()["detail"]


@pytest.mark.parametrize("body", [b"[[1, 2, 3, 4]]", b"42", b'"inputs"', b"null"])
def test_a_json_value_that_is_not_an_object_says_what_to_send(app_client, body):
    response = app_client.post("/models/iris/output", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and SEND_JSON in response.json()["detail"]


def test_malformed_json_gives_the_position_and_a_hint(app_client):
    response = app_client.post("/models/iris/output", content=b'{"inputs": [[1, 2,, 3]]}',
                               headers={"Content-Type": "application/json"})
    detail = response.json()["detail"]
    assert response.status_code == 422 and "not valid JSON" in detail
    assert "line 1, column 19" in detail and "commas" in detail
    cut = app_client.post("/models/iris/output", content=b'{"inputs": [[1, 2', headers={"Content-Type": "application/json"})
    assert "line 1" in cut.json()["detail"] and "close every bracket" in cut.json()["detail"]


def test_integers_beyond_64_bits_keep_their_exact_message(app_client):
    response = app_client.post("/models", json={"layer_sizes": [4, 10**30]})
    assert response.status_code == 422 and "NN_MAX_LAYER_SIZE" in response.json()["detail"]


def test_empty_bodies_still_name_the_missing_body(app_client):
    response = app_client.post("/models/iris/output", headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "body" in response.json()["detail"]


def test_the_openapi_document_keeps_the_request_schemas(app_client):
    schema = app_client.get("/openapi.json").json()
    body = schema["paths"]["/models/{model_id}/output"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/OutputRequest"}


def test_the_scan_counts_containers_and_depth():
    scan = BodyScan(max_containers=3)
    assert scan.feed(b'{"a": [[1], ') and not scan.feed(b"[2]]}")
    assert scan.opened == 4
    assert nesting_depth(b'{"a": [[1], [2]]}', 10) == 3 and nesting_depth(b"1", 10) == 0
    assert nesting_depth(b"]" * 100, 10) == 0  # cannot balance: left to orjson's message


def test_responses_by_orjson_write_nan_as_null_and_numpy_natively():
    body = OrjsonResponse({"x": math.nan, "y": np.arange(3, dtype=np.float32), "z": np.float64(math.inf)}).body
    assert orjson.loads(body) == {"x": None, "y": [0.0, 1.0, 2.0], "z": None}


def test_every_route_with_a_json_body_reads_it_through_the_bounded_layer(app_client):
    def routes(items):
        for route in items:
            if hasattr(route, "original_router"):  # an included router
                yield from routes(route.original_router.routes)
            else:
                yield route

    json_routes = [r for r in routes(app_client.app.routes) if isinstance(r, APIRoute) and r.body_field is not None
                   and not isinstance(r.body_field.field_info, Form)]
    assert len(json_routes) >= 6
    assert [r.path for r in json_routes if not isinstance(r, JsonBodyRoute)] == []  # use route_class=JsonBodyRoute


def test_numeric_rows_arrive_as_arrays_and_anything_else_gets_pydantics_message(app_client):
    from api.json_body import parse_and_validate
    from api.schemas import OutputRequest, SamplesCreate

    parsed = parse_and_validate(b'{"inputs": [[1, 2.5], [3, 4]], "targets": [0, 1]}', SamplesCreate, True, 64, 100)
    assert isinstance(parsed.inputs, np.ndarray) and parsed.inputs.tolist() == [[1, 2.5], [3, 4]]
    assert parsed.targets.tolist() == [0, 1]
    one = parse_and_validate(b'{"input": [1, 2], "include_gradients": true, "targets": [[0, 1]]}', OutputRequest, True, 64, 100)
    assert one.input.tolist() == [1, 2] and one.targets.shape == (1, 2) and one.include_gradients is True
    for body, loc in [(b'{"inputs": [[1, 2], [[3], 4]], "targets": [0, 1]}', ("body", "inputs", 1, 0)),  # as many numbers
                      (b'{"inputs": [[1, true]], "targets": [0]}', ("body", "inputs", 0, 1)),
                      (b'{"inputs": [[1, "2"]], "targets": [0]}', ("body", "inputs", 0, 1)),
                      (b'{"inputs": [[1, 2]], "targets": [false]}', ("body", "targets"))]:
        with pytest.raises(RequestValidationError) as raised:
            parse_and_validate(body, SamplesCreate, True, 64, 100)
        assert any(error["loc"][:len(loc)] == loc for error in raised.value.errors()), (body, raised.value.errors())
    for body in (b'{"inputs": [[1, 2]], "targets": [0], "inputs": [[1, null]]}',  # the last one was kept, silently
                 b'{"inputs": [[1, 2]], "targets": [0], "targets": [1]}', b'{"inputs": [[1, 2]], "inp\\u0075ts": [[3, 4]]}'):
        with pytest.raises(InvalidInput, match="the body names 'inputs' more than once|names 'targets' more than once"):
            parse_and_validate(body, SamplesCreate, True, 64, 100)
    ragged = app_client.post("/models/iris/output", json={"inputs": [[1, 2, 3, 4], [1, 2, 3]]})
    assert ragged.status_code == 422 and "inputs[1] has 3 values" in ragged.text, ragged.text
    flat = app_client.post("/models/iris/output", json={"inputs": [1, 2, 3, 4]})
    assert flat.status_code == 422, flat.text


def test_small_bodies_are_parsed_on_the_loop_and_large_ones_in_a_worker_thread(app_client, monkeypatch):
    import threading

    threads, real = [], json_body.parse_and_validate

    def recording(*args):
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(json_body, "parse_and_validate", recording)
    one = app_client.post("/models/iris/output", json={"input": X4[0]})
    padded = orjson.dumps({"inputs": X4})[:-1] + b" " * json_body.INLINE_BYTES + b"}"  # over INLINE_BYTES
    many = app_client.post("/models/iris/output", content=padded, headers={"Content-Type": "application/json"})
    assert one.status_code == 200 and many.status_code == 200, (one.text, many.text[:200])
    assert "AnyIO worker thread" not in threads[0] and threads[1] == "AnyIO worker thread", threads
