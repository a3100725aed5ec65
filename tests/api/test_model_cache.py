"""The per-process model cache (api/model_cache.py): LRU within its byte budget, and never stale: a job's
commit, a PUT of weights and a delete (with re-creation under the same id) are seen by the next request,
in one process (SQLite) and across two real replicas sharing Redis."""

import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from api.model_cache import ModelCache, network_bytes
from api.storage.base import ModelRecord
from neural_net import Network
from tests.api.conftest import IRIS, X4, Y3, running_app, wait_job
from tests.api.test_redis_backend import Cluster, _redis_available


def _record(uid: str, version: int = 1) -> ModelRecord:
    return ModelRecord(model_id=uid, uid=uid, version=version, info={}, created_at=0.0, updated_at=0.0)


def _net(seed: int = 0) -> Network:
    return Network.from_layer_sizes([4, 8, 3], activations=["relu", "softmax"], seed=seed)


def test_least_recently_used_goes_first_within_the_budget():
    net = _net()
    size = network_bytes(net, len(net.to_bytes()))
    cache = ModelCache(max_bytes=2 * size)
    for uid in ("a", "b"):
        cache.put(net, _record(uid), len(net.to_bytes()))
    assert cache.get("a", 1) is not None  # "b" is now the least recently used
    cache.put(net, _record("c"), len(net.to_bytes()))
    assert cache.get("b", 1) is None
    assert cache.get("a", 1) is not None and cache.get("c", 1) is not None
    assert cache.stats()["bytes"] == 2 * size and cache.stats()["evictions"] == 1
    assert cache.get("a", 2) is None  # another version of a cached model is another key


def test_a_zero_budget_caches_nothing_and_discard_drops_every_version():
    net = _net()
    off = ModelCache(max_bytes=0)
    assert off.put(net, _record("a"), 100).net is net
    assert off.get("a", 1) is None and off.stats()["entries"] == 0
    cache = ModelCache(max_bytes=10**9)
    cache.put(net, _record("a", 1), 100)
    cache.put(net, _record("a", 2), 100)
    cache.discard("a")
    assert cache.stats()["entries"] == 0 and cache.stats()["bytes"] == 0


def test_concurrent_misses_of_one_version_load_it_once():
    cache, net, started, release, loads = ModelCache(max_bytes=10**9), _net(), [], threading.Event(), []

    def load():
        loads.append(1)
        release.wait(10)
        return net, _record("a", 3), 100

    def request():
        started.append(1)
        return cache.get_or_load("a", 3, load)

    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(request) for _ in range(8)]
        deadline = time.monotonic() + 10
        while len(started) < 8 and time.monotonic() < deadline:
            time.sleep(0.01)
        release.set()
        entries = [f.result() for f in futures]
    assert len(loads) == 1 and all(e is entries[0] for e in entries)


def _metric(text: str, name: str) -> float:
    return float(re.search(rf"^{name}(?:_total)? (\S+)$", text, re.M).group(1))


def _expected(client, model_id: str, x) -> np.ndarray:
    net = Network.from_bytes(client.get(f"/models/{model_id}/export").content)
    return net.predict(np.asarray(x, dtype=np.float32))


def test_a_cached_network_keeps_nothing_of_the_requests_it_served(tmp_path):
    """NN_MODEL_CACHE_MB counts a network's weights; its layers kept each request's arrays besides (the inputs, z and
    a of a plain prediction; the workspaces of gradients): 15 models grew a 30 MB cache's process by 650 MB."""
    rows = (X4 * 200)[:1000]
    with running_app(tmp_path, workers=0) as client:
        client.post("/models", json=IRIS)
        for body in ({"inputs": rows}, {"inputs": rows, "targets": (Y3 * 200)[:1000], "include_gradients": True},
                     {"inputs": rows[:4], "include_activations": True}):
            assert client.post("/models/iris/output", json=body).status_code == 200
        assert client.post("/models/iris/evaluate", json={"inputs": rows, "targets": (Y3 * 200)[:1000]}).status_code == 200
        (entry,) = client.app.state.service.cache._entries.values()
        for layer in entry.net.layers:
            held = {name: value for name, value in vars(layer).items() if isinstance(value, np.ndarray)}
            assert not layer._workspaces and all(value.shape[0] != 1000 for value in held.values()), held.keys()
            assert layer.z is None and layer.a is None and layer._x is None


def test_an_output_right_after_a_job_commits_uses_the_new_weights(tmp_path):
    with running_app(tmp_path) as client:
        assert client.post("/models", json=IRIS).status_code == 201
        before = client.post("/models/iris/output", json={"inputs": X4}).json()
        again = client.post("/models/iris/output", json={"inputs": X4}).json()
        assert again["outputs"] == before["outputs"]
        assert _metric(client.get("/metrics").text, "nn_model_cache_hits") >= 1

        job = client.post("/models/iris/training-jobs", json={"min_samples": 6, "epochs": 5, "batch_size": 2,
                                                              "inputs": X4, "targets": Y3}).json()
        job = wait_job(client, job["job_id"])
        assert job["status"] == "succeeded"
        after = client.post("/models/iris/output", json={"inputs": X4}).json()  # no wait: the commit is done
        assert after["model_version"] == job["model_version"] > before["model_version"]
        np.testing.assert_allclose(after["outputs"], _expected(client, "iris", X4), rtol=1e-6)
        assert not np.allclose(after["outputs"], before["outputs"])


def test_put_weights_and_delete_are_seen_by_the_next_request(tmp_path):
    with running_app(tmp_path, workers=0) as client:
        assert client.post("/models", json=IRIS).status_code == 201
        client.post("/models/iris/output", json={"inputs": X4})
        weights = client.get("/models/iris/weights").json()
        weights["layers"][1]["biases"] = [50.0, 0.0, 0.0]
        assert client.put("/models/iris/weights", json={"layers": weights["layers"]}).status_code == 200
        out = client.post("/models/iris/output", json={"inputs": X4}).json()
        assert out["model_version"] == 2 and out["predictions"] == [0] * 6
        assert client.delete("/models/iris").status_code == 204
        assert client.post("/models/iris/output", json={"inputs": X4}).status_code == 404
        assert client.post("/models", json={**IRIS, "seed": 7}).status_code == 201  # same id, version 1 again
        out = client.post("/models/iris/output", json={"inputs": X4}).json()
        np.testing.assert_allclose(out["outputs"], _expected(client, "iris", X4), rtol=1e-6)


@pytest.mark.skipif(not _redis_available(), reason="no Redis at NN_TEST_REDIS_URL")
def test_two_redis_replicas_never_serve_stale_weights(tmp_path):
    cluster = Cluster(tmp_path)
    try:
        cluster.start(replicas=2, workers=0)
        a, b = (httpx.Client(base_url=url, timeout=10) for url in cluster.urls)
        assert a.post("/models", json=IRIS).status_code == 201
        first = b.post("/models/iris/output", json={"inputs": X4}).json()
        assert b.post("/models/iris/output", json={"inputs": X4}).json() == first  # served from b's cache
        hits, misses = (_metric(b.get("/metrics").text, f"nn_model_cache_{n}") for n in ("hits", "misses"))
        assert hits >= 1

        weights = a.get("/models/iris/weights").json()
        weights["layers"][1]["biases"] = [50.0, 0.0, 0.0]
        assert a.put("/models/iris/weights", json={"layers": weights["layers"]}).status_code == 200
        out = b.post("/models/iris/output", json={"inputs": X4}).json()
        assert out["model_version"] == 2 and out["predictions"] == [0] * 6
        assert _metric(b.get("/metrics").text, "nn_model_cache_misses") == misses + 1  # b loaded version 2

        b.post("/models/iris/output", json={"inputs": X4})  # b caches version 2 ...
        assert a.delete("/models/iris").status_code == 204  # ... which a deletes and re-creates: version 1, new uid
        assert a.post("/models", json={**IRIS, "seed": 7}).status_code == 201
        out = b.post("/models/iris/output", json={"inputs": X4}).json()
        assert out["model_version"] == 1
        np.testing.assert_allclose(out["outputs"], _expected(a, "iris", X4), rtol=1e-6)
        assert not np.allclose(out["outputs"], first["outputs"])

        assert a.delete("/models/iris").status_code == 204
        assert b.post("/models/iris/output", json={"inputs": X4}).status_code == 404
    finally:
        cluster.stop()


def test_small_predictions_are_computed_on_the_event_loop_and_large_ones_in_a_thread(tmp_path, monkeypatch):
    """A plain prediction of a few rows by a cached network skips the hop to a worker thread (the hop costs more
    than the math); more rows than INLINE_WORK allows, targets, or an older version go to a thread. The answers
    have the same fields either way, and every request counts one cache hit."""
    from api import services
    from api.model_cache import INLINE_WORK
    from api.schemas import OutputResponse

    threads = []
    compute = services.Service.output

    def spied(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return compute(self, *args, **kwargs)

    monkeypatch.setattr(services.Service, "output", spied)
    x = np.random.default_rng(0).random((40, 784)).round(4).tolist()
    with running_app(tmp_path, workers=0) as client:
        model = {"model_id": "wide", "layer_sizes": [784, 64, 10], "activations": ["relu", "softmax"], "seed": 0}
        assert client.post("/models", json=model).status_code == 201
        n_params = 784 * 64 + 64 + 64 * 10 + 10
        fits = INLINE_WORK // n_params
        client.post("/models/wide/output", json={"inputs": x[:1]})  # loads it
        hits, threads[:] = _metric(client.get("/metrics").text, "nn_model_cache_hits"), []

        small = client.post("/models/wide/output", json={"inputs": x[:fits]})
        large = client.post("/models/wide/output", json={"inputs": x[:fits + 1]})
        versioned = client.post("/models/wide/output?version=1", json={"inputs": x[:fits]})
        with_targets = client.post("/models/wide/output", json={"inputs": x[:1], "targets": [3]})
        assert [r.status_code for r in (small, large, versioned, with_targets)] == [200] * 4
        on_loop = [not name.startswith("AnyIO worker") for name in threads]
        assert on_loop == [True, False, False, False]
        assert small.content == versioned.content  # byte for byte
        assert list(small.json()) == list(OutputResponse.model_fields)
        assert small.json()["cost"] is small.json()["gradients"] is small.json()["activations"] is None
        np.testing.assert_allclose(large.json()["outputs"][:fits], small.json()["outputs"], rtol=1e-5)  # other BLAS blocks
        assert with_targets.json()["cost"] > 0
        assert _metric(client.get("/metrics").text, "nn_model_cache_hits") == hits + 4  # one each, not two
        np.testing.assert_allclose(small.json()["outputs"], _expected(client, "wide", x[:fits]), rtol=1e-6)
