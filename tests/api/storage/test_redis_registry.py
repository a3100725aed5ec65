"""RedisStore's GET /jobs indexes for jobs stored before they existed: indexed once, at the API's start."""

import uuid

import pytest

from api.storage.redis_store import RedisStore
from tests.api.storage.test_store_contract import REDIS_URL, job, redis_available

pytestmark = pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_URL}")


def test_jobs_stored_before_the_indexes_are_indexed_once():
    store = RedisStore(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}")
    try:
        store.create_model("m", b"blob", {"n": 1})
        made = [store.create_job(job("m", min_samples=10)) for _ in range(3)]
        store.cancel_job(made[0].job_id)
        # as an older service left them: no index keys at all
        store.redis.delete(*store.redis.keys(f"{store.prefix}:jobs*"))
        assert store.list_all_jobs(0, 10) == ([], 0)
        assert store.index_existing_jobs() == 3
        assert [j.job_id for j in store.list_all_jobs(0, 10)[0]] == [j.job_id for j in reversed(made)]
        assert [j.job_id for j in store.list_all_jobs(0, 10, status="cancelled", model_id="m")[0]] == [made[0].job_id]
        assert [j.job_id for j in store.list_all_jobs(0, 10, status="buffering", kind="training")[0]] == \
            [made[2].job_id, made[1].job_id]
        assert store.index_existing_jobs() == 0  # once
        assert store.list_all_jobs(0, 10)[1] == 3
    finally:
        store.reset()
        store.close()


def test_a_notification_another_replica_sent_meanwhile_is_not_sent_again():
    """Two replicas look for due notifications. B reads the due list, then A claims, sends and records the
    notification before B's claim: B's claim succeeds (A's record dropped A's claim) but B must not send again
    (the receiver saw a third attempt for a 500-then-200 delivery across two replicas, once in a full run)."""
    import time

    from api.storage.base import Notification

    prefix = f"test-{uuid.uuid4().hex[:8]}"
    a, b = RedisStore(REDIS_URL, prefix=prefix), RedisStore(REDIS_URL, prefix=prefix)
    try:
        a.create_model("m", b"blob", {"n": 1})
        made = a.create_job(job("m", min_samples=10))
        a.add_notification(Notification(job_id=made.job_id, url="http://127.0.0.1:9/hook", secret="s"))
        a.cancel_job(made.job_id)  # ended: its notification is due
        claim = b.redis.set

        def a_delivers_first(name, *args, **kwargs):  # B's claim, once A has sent and recorded the notification
            if name.endswith(f":nclaim:{made.job_id}") and kwargs.get("nx") and not sent:
                [(note, _)] = a.due_notifications(time.time(), 20)
                a.record_attempt(note.job_id, status="delivered", error=None, next_attempt_at=time.time(), now=time.time())
                sent.append(note)
            return claim(name, *args, **kwargs)

        sent: list = []
        b.redis.set = a_delivers_first
        assert b.due_notifications(time.time(), 20) == [] and len(sent) == 1
        assert b.redis.exists(f"{prefix}:nclaim:{made.job_id}") == 0  # B let its claim go
        assert a.get_notifications([made.job_id])[made.job_id].attempts == 1
    finally:
        a.reset()
        a.close()
        b.close()
