"""The stamp reads of the Redis store on the event loop (api/storage/redis_stamps.py): requests asking together
share one round trip, none is answered by a read sent before it asked, and an unreachable Redis is a
StoreUnavailable (503) at once."""

import asyncio
import uuid

import pytest

from api.errors import StoreUnavailable
from tests.api.storage.test_store_contract import REDIS_URL, redis_available

pytestmark = pytest.mark.skipif(not redis_available(), reason=f"no Redis at {REDIS_URL}")


@pytest.fixture
def store():
    from api.storage.redis_store import RedisStore

    s = RedisStore(REDIS_URL, prefix=f"test-{uuid.uuid4().hex[:8]}")
    yield s
    s.reset()
    s.close()


def _count_batches(store) -> list[int]:
    """The number of reads each round trip answered."""
    sizes, send = [], store._stamps._send

    async def counted(client, batch):
        sizes.append(sum(len(waiting) for waiting in batch.values()))
        await send(client, batch)

    store._stamps._send = counted
    return sizes


def test_reads_asked_together_share_one_round_trip(store):
    for model_id in ("a", "b", "c"):
        store.create_model(model_id, b"1", {})
    sizes = _count_batches(store)

    async def scenario():
        stamps = await asyncio.gather(*(store.model_stamp_on_loop("abc"[i % 3]) for i in range(30)))
        assert [s[1] for s in stamps] == [1] * 30 and len({s[0] for s in stamps}) == 3
        assert sizes == [30]
        for _ in range(3):  # one at a time: a round trip each
            await store.model_stamp_on_loop("a")
        assert sizes == [30, 1, 1, 1]
        await store.aclose()

    asyncio.run(scenario())


def test_a_read_asked_after_a_batch_was_sent_waits_for_the_next_one(store):
    store.create_model("a", b"1", {})
    sizes = _count_batches(store)

    async def scenario():
        first = asyncio.gather(*(store.model_stamp_on_loop("a") for _ in range(5)))
        while not sizes:  # the first batch has closed
            await asyncio.sleep(0)
        store.replace_model("a", b"2", {}, expected_version=1)  # acknowledged before the next read is asked
        late = await store.model_stamp_on_loop("a")
        assert late[1] == 2 and sizes == [5, 1]
        assert all(s[1] >= 1 for s in await first)
        await store.aclose()

    asyncio.run(scenario())


def test_a_cancelled_read_leaves_the_others_of_its_batch_answered(store):
    store.create_model("a", b"1", {})

    async def scenario():
        reads = [asyncio.ensure_future(store.model_stamp_on_loop("a")) for _ in range(4)]
        await asyncio.sleep(0)  # each has joined the batch
        reads[1].cancel()
        done = await asyncio.gather(*reads, return_exceptions=True)
        assert isinstance(done[1], asyncio.CancelledError)
        assert [d[1] for i, d in enumerate(done) if i != 1] == [1, 1, 1]
        await store.aclose()

    asyncio.run(scenario())


def test_an_unreachable_redis_is_a_store_unavailable_at_once():
    from api.storage.redis_store import RedisStore

    store = RedisStore("redis://127.0.0.1:1/0", socket_timeout=0.5)

    async def scenario():
        results = await asyncio.gather(*(store.model_stamp_on_loop("a") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, StoreUnavailable) and "unreachable" in str(r) for r in results)
        await store.aclose()

    asyncio.run(scenario())


def test_a_redis_that_drops_the_connection_is_asked_once_not_retried():
    """A server that accepts connections and closes them at once: one connection, then the 503 at once (the API does
    not retry; its 503 tells the client to)."""
    import socket
    import threading

    from api.storage.redis_store import RedisStore

    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                connection = listener.accept()[0]
                accepted.append(connection)
                connection.close()
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    store = RedisStore(f"redis://127.0.0.1:{listener.getsockname()[1]}/0", socket_timeout=0.2)

    async def scenario():
        with pytest.raises(StoreUnavailable, match="unreachable"):
            await store.model_stamp_on_loop("a")
        await store.aclose()

    try:
        asyncio.run(scenario())
        assert len(accepted) == 1
    finally:
        listener.close()
