"""HTTP metrics (api/metrics.py): labels come from fixed sets, so no client can grow the registry."""

import pytest

from tests.api.conftest import IRIS, running_app


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    with running_app(tmp_path_factory.mktemp("data"), workers=0, api_keys="k") as client:
        client.headers["Authorization"] = "Bearer k"
        assert client.post("/models", json=IRIS).status_code == 201
        yield client


def test_made_up_methods_and_paths_leave_the_metrics_flat(secured):
    for i in range(50):  # warm-up: every fixed label set that the loop below can use exists afterwards
        secured.request(f"M{i:07d}", "/models", headers={"Authorization": ""})
        secured.request(f"M{i:07d}", f"/nowhere/{i}")
        secured.get(f"/models/iris-{i}")
    secured.get("/metrics")
    before = secured.get("/metrics").text
    for i in range(50, 350):
        assert secured.request(f"M{i:07d}", "/models", headers={"Authorization": ""}).status_code == 401
        secured.request(f"M{i:07d}", f"/nowhere/{i}")
        secured.get(f"/models/iris-{i}")
    after = secured.get("/metrics").text
    assert "M0000051" not in after and "/nowhere/" not in after and "iris-1" not in after
    assert len(after.splitlines()) == len(before.splitlines())
    assert 'method="OTHER",route="unmatched",status="401"' in after
    assert 'method="GET",route="/models/{model_id}",status="404"' in after
