"""HTTP parity with the core's optimizers: `optimizer_options` is checked at submit by the core's own check, kept in the
job's stored fit config (so a job resumed from its checkpoint rebuilds the same optimizer), reaches the core, and an
`optimizer` sent as an object is told where its parts go. Storage is involved, so both backends."""

import threading

import numpy as np
import pytest

from neural_net import Network
from api.search_trials import run_search_trial
from api.worker import run_job
from tests.api.conftest import X4, Y3, backend_app, create, run_queued

BODY = {"inputs": X4 * 2, "targets": Y3 * 2, "epochs": 6, "batch_size": 3, "optimizer": "momentum",
        "learning_rate": 0.05, "seed": 4}


@pytest.fixture(params=["sqlite", "redis"])
def client(request, tmp_path):
    with backend_app(request.param, tmp_path) as c:
        yield c


def submit(client, model_id, **body) -> dict:
    response = client.post(f"/models/{model_id}/training-jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def model_net(client, model_id) -> Network:
    return Network.from_bytes(client.get(f"/models/{model_id}/export").content)


@pytest.mark.parametrize("body, words", [
    # the core's config dict sent as `optimizer` answered "expected text in quotes; received an object"
    ({"optimizer": {"name": "sgd", "lr": 0.1}}, "optimizer: send the name as text in `optimizer`, its options in "
                                                "`optimizer_options` and the rate in `learning_rate`"),
    ({"optimizer": "rmsprop", "optimizer_options": {"rho": 0.9}},
     "optimizer_options: optimizer 'rmsprop' does not take the option rho; it takes: learning_rate, alpha, eps"),
    ({"optimizer": "adam", "optimizer_options": {"lr": 0.1}}, "the learning rate goes in the `learning_rate` field"),
    # an option of another optimizer was told the same, which had nothing to do with it
    ({"optimizer": "adam", "optimizer_options": {"momentum": 0.5}}, "does not take the option momentum; it takes: "
                                                                    "learning_rate, beta1, beta2, eps"),
    ({"optimizer": "adam", "optimizer_options": {"learning_rate": 0.1}},
     "optimizer_options: learning_rate is not an option here; send it in the job's `learning_rate` field"),
    ({"optimizer": "adam", "optimizer_options": {"name": 1.0}}, "name is not an option; the optimizer's name goes in `optimizer`"),
    ({"optimizer": "sgd", "optimizer_options": {"momentum": 0.9}}, "momentum is an optimizer of its own: 'momentum' or 'nesterov'"),
    ({"optimizer": "Nesterov", "optimizer_options": {"momentum": 1.0}}, "momentum must be a number in [0, 1); received momentum=1.0"),
    ({"optimizer": "adamw", "optimizer_options": {"weight_decay": -1}}, "weight_decay must be a finite number >= 0"),
    ({"optimizer": "adam", "optimizer_options": {"beta1": "0.8"}}, "optimizer_options.beta1: expected a number"),
    ({"optimizer": "adam", "optimizer_options": {"beta1": True}}, "optimizer_options.beta1: expected a number"),
])
def test_options_are_checked_at_submit_by_the_core(tmp_path, body, words):
    with backend_app("sqlite", tmp_path) as client:
        create(client, model_id="checked")
        response = client.post("/models/checked/training-jobs", json={"min_samples": 6, **body})
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
        if "lr" not in body.get("optimizer_options", {}):
            assert "the learning rate goes" not in response.json()["detail"]
        assert client.get("/models/checked/jobs").json()["count"] == 0  # nothing stored


def test_the_options_reach_the_core_and_the_job_record_shows_them(client):
    weights = {}
    for model_id, options in (("zero", {"momentum": 0.0}), ("high", {"momentum": 0.9}), ("default", None)):
        create(client, model_id=model_id)
        job = submit(client, model_id, **BODY, **({"optimizer_options": options} if options else {}))
        assert job["params"]["optimizer_options"] == options
        (done,) = run_queued(client)
        assert done["status"] == "succeeded", done["error"]
        assert client.get(f"/jobs/{job['job_id']}").json()["params"]["optimizer_options"] == options
        net = model_net(client, model_id)
        assert net.optimizer.get_config() == {"name": "momentum", "learning_rate": 0.05,
                                              "momentum": (options or {"momentum": 0.9})["momentum"]}
        weights[model_id] = net._flat.copy()
    assert not np.allclose(weights["zero"], weights["high"])  # momentum 0 is plain SGD, 0.9 is not
    np.testing.assert_array_equal(weights["high"], weights["default"])  # 0.9 is the core's default


def test_a_resumed_job_keeps_its_options(client):
    """An interrupted job resumes from its checkpoint with the stored options: the core keeps the optimizer's state only
    for the same name and settings, so losing them would restart momentum 0.5 as a fresh 0.9 and end elsewhere."""
    body = {**BODY, "optimizer": "nesterov", "optimizer_options": {"momentum": 0.5}}
    create(client, model_id="straight")
    submit(client, "straight", **body)
    (straight,) = run_queued(client)
    assert straight["status"] == "succeeded", straight["error"]

    create(client, model_id="resumed")
    job = submit(client, "resumed", **body)
    store, settings = client.app.state.service.store, client.app.state.settings
    stop, save_checkpoint = threading.Event(), store.save_checkpoint

    def stop_after_epoch_2(job_id, blob, info, done, *rest):
        save_checkpoint(job_id, blob, info, done, *rest)
        if done == 2:
            stop.set()  # as at a shutdown or crash: the job goes back to the queue with its checkpoint

    store.save_checkpoint = stop_after_epoch_2
    requeued = run_job(store, store.claim_job("first-worker"), settings, stop)
    assert requeued.status == "queued" and requeued.epochs_done == 2
    assert Network.from_bytes(store.load_checkpoint(job["job_id"])).optimizer.get_config()["momentum"] == 0.5
    store.save_checkpoint = save_checkpoint
    (resumed,) = run_queued(client, "second-worker")
    assert resumed["status"] == "succeeded", resumed["error"]
    assert resumed["params"]["optimizer_options"] == {"momentum": 0.5}
    assert [h["loss"] for h in resumed["history"]] == [h["loss"] for h in straight["history"]]
    np.testing.assert_array_equal(model_net(client, "resumed")._flat, model_net(client, "straight")._flat)


def test_a_search_cannot_vary_them_and_says_what_it_can(tmp_path):
    """The core's FIT_PARAMETERS (what `search` passes to fit per trial) have no optimizer_options, so a search space
    cannot name them; an optimizer given as an object in the space is told where its parts go, naming the trial."""
    with backend_app("sqlite", tmp_path) as client:
        create(client, model_id="searched")
        base = {"inputs": X4, "targets": Y3, "folds": 2}
        response = client.post("/models/searched/search-jobs", json={**base, "space": {"optimizer_options": [{"momentum": 0.5}]}})
        assert response.status_code == 422 and "cannot search 'optimizer_options'; searchable: " in response.json()["detail"]
        response = client.post("/models/searched/search-jobs",
                               json={**base, "space": {"optimizer": [{"name": "momentum", "momentum": 0.5}]}})
        assert response.status_code == 422, response.text
        assert "trial 0" in response.json()["detail"] and "`optimizer_options`" in response.json()["detail"]


def test_a_search_gives_its_optimizer_options_to_every_trial_and_to_apply_best(client):
    """A search body had no optimizer_options: its trials and the model apply_best trained could only use each
    optimizer's defaults, and an optimizer object there still answered 'expected text in quotes'."""
    base = {"inputs": X4 * 2, "targets": Y3 * 2, "folds": 2, "epochs": 4, "batch_size": 3, "learning_rate": 0.05,
            "seed": 1, "apply_best": True}
    scores = {}
    for model_id, momentum in (("slow", 0.0), ("fast", 0.9)):
        create(client, model_id=model_id)
        response = client.post(f"/models/{model_id}/search-jobs", json={
            **base, "space": {"optimizer": ["momentum", "nesterov"]}, "optimizer_options": {"momentum": momentum}})
        assert response.status_code == 202, response.text
        store, settings = client.app.state.service.store, client.app.state.settings
        while (claimed := store.claim_trial("w")) is not None:
            run_search_trial(store, *claimed, settings, threading.Event())
        (done,) = run_queued(client)  # the apply stage
        assert done["status"] == "succeeded", done["error"]
        scores[model_id] = [t["score"] for t in sorted(done["search"]["trials"], key=lambda t: t["index"])]
        assert model_net(client, model_id).optimizer.get_config()["momentum"] == momentum  # apply_best kept them
    assert scores["slow"] != scores["fast"]  # the options reached the trials
    refused = client.post("/models/slow/search-jobs", json={**base, "space": {"optimizer": ["momentum", "adam"]},
                                                            "optimizer_options": {"momentum": 0.5}})
    assert refused.status_code == 422 and "trial 1" in refused.json()["detail"], refused.text
    refused = client.post("/models/slow/search-jobs", json={**base, "space": {"epochs": [2]},
                                                            "optimizer": {"name": "sgd"}})
    assert refused.status_code == 422 and "its options in `optimizer_options`" in refused.json()["detail"]
