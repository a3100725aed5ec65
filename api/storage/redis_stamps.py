"""Model stamps (uid, version) read on the event loop, for the cached-model fast path of POST /output.

Every request that serves a cached network reads its model's stamp, so that a version committed on any
replica is served by the next request (api/model_cache.py). In a worker thread that read costs a hop to
the thread and back; here it is one asynchronous HMGET on the loop, and the requests that ask at the
same time share it: each request joins the batch that is still being gathered, and a batch is sent
only after every request in it has asked. So no request is answered from a read that began before it
arrived, and a write acknowledged before a request was sent is always seen by it; under load one
round trip serves many requests.
"""

import asyncio
from typing import Callable

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from api.errors import ModelNotFound
from api.storage.redis_tx import unavailable


class StampReader:
    """Batched HMGET of ``key(model_id)``'s uid and version, on whichever event loop calls ``read``."""

    def __init__(self, url: str, key: Callable[..., str], socket_timeout: float, where: str):
        self.url, self.key, self.socket_timeout, self.where = url, key, socket_timeout, where
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.asyncio.Redis | None = None
        self._gathering: dict[str, list[asyncio.Future]] = {}

    def _bind(self, loop: asyncio.AbstractEventLoop) -> redis.asyncio.Redis:
        """The client of ``loop`` (an asyncio connection belongs to the loop that opened it)."""
        if self._loop is not loop:
            # no retries, as the API's other reads: a Redis that does not answer is a 503 after one socket timeout
            self._client = redis.asyncio.Redis.from_url(self.url, socket_timeout=self.socket_timeout,
                                                        socket_connect_timeout=self.socket_timeout,
                                                        retry=Retry(NoBackoff(), 0))
            self._loop, self._gathering = loop, {}
        return self._client

    async def read(self, model_id: str) -> tuple[str, int]:
        """The model's (uid, version). Raises ModelNotFound, or StoreUnavailable when Redis does not answer."""
        loop = asyncio.get_running_loop()
        client = self._bind(loop)
        waiting = loop.create_future()
        if not self._gathering:  # the first to ask: the batch closes once the requests ready now have joined
            loop.call_soon(lambda: loop.create_task(self._send(client, self._take())))
        self._gathering.setdefault(model_id, []).append(waiting)
        try:
            stamp = await waiting
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unavailable(self.where, exc) from None
        if stamp is None:
            raise ModelNotFound(model_id)
        return stamp

    def _take(self) -> dict[str, list[asyncio.Future]]:
        batch, self._gathering = self._gathering, {}
        return batch

    async def _send(self, client: redis.asyncio.Redis, batch: dict[str, list[asyncio.Future]]) -> None:
        waiters = [(model_id, waiting) for model_id, futures in batch.items() for waiting in futures]
        try:
            if len(batch) == 1:
                replies = [await client.hmget(self.key("m", next(iter(batch))), ["uid", "version"])]
            else:
                async with client.pipeline(transaction=False) as pipe:
                    for model_id in batch:
                        pipe.hmget(self.key("m", model_id), ["uid", "version"])
                    replies = await pipe.execute()
        except asyncio.CancelledError:  # the loop is closing: so are the requests waiting
            for _, waiting in waiters:
                waiting.cancel()
            raise
        except Exception as exc:
            for _, waiting in waiters:
                if not waiting.done():
                    waiting.set_exception(exc)
            return
        stamps = {model_id: None if uid is None else (uid.decode(), int(version))
                  for model_id, (uid, version) in zip(batch, replies)}
        for model_id, waiting in waiters:
            if not waiting.done():  # its request may have been cancelled (the client went away)
                waiting.set_result(stamps[model_id])

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client, self._loop = None, None
