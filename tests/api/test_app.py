"""api/app.py: the routers are matched in an order of their own (hot paths first) and documented in another."""

import re

from api.app import DOCUMENTED, MATCHED_FIRST, create_app
from tests.api.conftest import running_app, settings_for


def test_no_two_routers_have_patterns_that_match_one_path():
    """What lets the hot routers be matched first: a path one router's pattern takes matches no other router's."""
    patterns = [(i, route.path, route.path_regex) for i, router in enumerate(DOCUMENTED) for route in router.routes]
    for i, path, _ in patterns:
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        assert [other for j, other, regex in patterns if j != i and regex.match(concrete)] == [], path


def test_the_hot_routers_are_matched_first_and_docs_keep_their_order(tmp_path):
    app = create_app(settings_for(tmp_path, workers=0))
    routed = [path for route in app.routes for path in _paths(route)]
    first = {route.path for router in MATCHED_FIRST for route in router.routes}
    assert {path for path in routed if path.startswith("/v2")} <= first
    assert max(routed.index(path) for path in first) < min(routed.index(p) for p in ("/health", "/jobs", "/datasets"))
    documented = [route.path for router in DOCUMENTED for route in router.routes if route.include_in_schema]
    assert list(app.openapi()["paths"]) == list(dict.fromkeys(documented))


def _paths(route) -> list[str]:
    """The paths a route of the app holds: an included router's own (newer FastAPI keeps routers whole), or its."""
    inner = getattr(route, "original_router", None)
    return [r.path for r in inner.routes] if inner is not None else [getattr(route, "path", "")]


def test_a_single_value_query_parameter_given_twice_is_a_422_naming_it(tmp_path):
    """FastAPI would quietly use the last value: ?model_id=a&model_id=b listed b's jobs (found by the fuzz test)."""
    with running_app(tmp_path, workers=0) as client:
        response = client.get("/jobs?model_id=a&offset=0&model_id=b")
        assert response.status_code == 422
        assert response.json() == {"detail": "query parameter 'model_id' is given 2 times; it takes one value, so send it once"}
        assert client.get("/jobs?model_id=a&offset=0&limit=5").status_code == 200
        assert client.get("/v2/models/x/ready?limit=1&limit=2").json()["error"].startswith("query parameter 'limit' is given 2")
        # names no route declares are ignored, repeated or not, as FastAPI ignores them: a probe stays a 200
        assert client.get("/v2/health/ready?x=1&x=2").status_code == 200
        csv = b"a,b,c\n1,2,3\n4,5,6\n"  # ?target= is an array: it repeats
        created = client.post("/datasets?target=a&target=c", content=csv, headers={"Content-Type": "text/csv"})
        assert created.status_code == 201, created.text
        assert created.json()["n_features"] == 1


def test_a_compressed_body_outside_v2_is_a_415_naming_the_coding(tmp_path):
    """Read as text, a gzip body was refused as "not valid JSON" (/output) or "not UTF-8" (/datasets)."""
    import gzip

    with running_app(tmp_path, workers=0) as client:
        body = gzip.compress(b'{"inputs": [[1, 2, 3, 4]]}')
        for path in ("/models/iris/output", "/datasets"):
            response = client.post(path, content=body, headers={"Content-Type": "application/json",
                                                                 "Content-Encoding": "gzip"})
            assert response.status_code == 415, response.text
            assert response.json()["detail"] == "Content-Encoding 'gzip' is not supported here; send the body uncompressed"
            assert response.headers["accept-encoding"] == "identity"
        assert client.get("/health", headers={"Content-Encoding": "identity"}).status_code == 200
        assert client.get("/health", headers={"Content-Encoding": "gzip"}).status_code == 200  # no body: nothing to read
        # repeated lines form one list (RFC 9110): "identity" then "gzip" was read as identity, and the body as text
        two_lines = [("Content-Type", "application/json"), ("Content-Encoding", "identity"), ("Content-Encoding", "gzip")]
        response = client.post("/models", content=body, headers=two_lines)
        assert response.status_code == 415 and "'identity, gzip'" in response.json()["detail"], response.text
        v2 = client.post("/v2/models/iris/infer", content=body, headers=[("Content-Encoding", "gzip"), ("Content-Encoding", "br")])
        assert v2.status_code == 415 and "gzip, br" in v2.json()["error"], v2.text  # br was ignored and gzip read
