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
