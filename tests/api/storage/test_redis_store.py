"""RedisStore.atomic's optimistic steps against a real Redis: an error a step raises on reads of two states (another
replica committed between two of its reads) is retried as a conflict, not answered as a 500."""

import numpy as np
import pytest

from api.storage.redis_tx import RedisTx
from tests.api.storage.test_store_contract import REDIS_URL, job, store  # noqa: F401 - a real store on each backend


@pytest.mark.parametrize("store", ["redis"], indirect=True)  # SQLite's steps are serialisable: none sees two states
def test_a_step_that_read_another_replicas_commit_halfway_is_retried(store, monkeypatch):
    """Appends racing on two replicas with a buffering job: one step read the job as buffering, then (its next read)
    the samples the other replica's append had just claimed for it: RuntimeError "already holds samples", a 500
    (24-29 of 240 appends in the race)."""
    from api.storage.redis_store import RedisStore

    store.create_model("m", b"blob", {"n": 1})
    waiting = store.create_job(job("m", min_samples=2))
    other = RedisStore(REDIS_URL, prefix=store.prefix)  # the other replica
    x, y = np.ones((2, 2), np.float32), np.ones((2, 1), np.float32)
    read = RedisTx._read
    raced = {}

    def other_commits_before_the_samples_are_read(tx, key, name, *args):
        if key.endswith(f"js:{waiting.job_id}") and not raced:
            raced["append"] = None
            raced["append"] = other.append_samples("m", x, y, 100)  # queues the job, which takes its 2 rows
        return read(tx, key, name, *args)

    monkeypatch.setattr(RedisTx, "_read", other_commits_before_the_samples_are_read)
    size, queued = store.append_samples("m", x * 2, y * 2, 100)
    monkeypatch.undo()
    assert [j.job_id for j in raced["append"][1]] == [waiting.job_id] and queued == []
    assert size == 2 and store.get_job(waiting.job_id).status == "queued"  # the retried step appended to the buffer
    other.close()


@pytest.mark.parametrize("store", ["redis"], indirect=True)
def test_a_version_list_is_one_snapshot_though_another_replica_writes_meanwhile(store, monkeypatch):
    """The list read the model's versions, then each version's record: a PUT on another replica in between pruned
    the oldest and added one the list had not seen, so it showed one kept version fewer (134 of 1,200 listings)."""
    import redis.commands.core

    from api.storage.redis_store import RedisStore

    other = RedisStore(REDIS_URL, prefix=store.prefix, keep_versions=3)
    store.keep_versions = 3
    store.create_model("m", b"v1", {"n": 1})
    for i in range(2, 6):
        store.replace_model("m", f"v{i}".encode(), {"n": i})
    kept = len(store.list_versions("m"))
    read = redis.commands.core.SortedSetCommands.zrevrangebyscore
    raced = []

    def another_put_right_after(client, *args, **kwargs):
        versions = read(client, *args, **kwargs)
        if not raced:
            raced.append(other.replace_model("m", b"v6", {"n": 6}))
        return versions

    monkeypatch.setattr(redis.commands.core.SortedSetCommands, "zrevrangebyscore", another_put_right_after)
    listed = store.list_versions("m")
    monkeypatch.undo()
    assert raced and len(listed) == kept == 4 and listed[0].version == 6, [v.version for v in listed]
    other.close()
