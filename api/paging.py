"""Pages of lists (models, jobs) within a byte budget: `limit` items, or fewer when more would pass
NN_MAX_LIST_BYTES, read from the store a few records at a time and serialised one by one.

A model's summary holds its class names twice (up to 4,096 names of 200 characters: 1.7 MB), a job its
history (a 10,000-epoch job: 1.3 MB); `GET /models?limit=500` of such models took the API process to 3.6 GB.
Now a page's memory is about the budget plus a few records, whatever `limit` says, and `next_offset` tells a
client where the next page begins (null after the last).
"""

from typing import Callable

import orjson
from fastapi import Response
from pydantic import BaseModel, Field

from api.schemas import JobPublic, ModelPublic

FIRST, CHUNK = 8, 100  # records of a page's first read, and of each later one at most (as many as seem to fit)
NEXT_OFFSET = ("Offset of the next page; null after the last. A page holds fewer than `limit` items when more would "
               "pass NN_MAX_LIST_BYTES (it always holds one): follow next_offset, not offset + limit.")


class ModelsPublic(BaseModel):
    data: list[ModelPublic] = Field(description="One page of models, oldest first.")
    count: int = Field(description="Total number of models (under NN_TENANCY, of the models this key sees).")
    next_offset: int | None = Field(None, description=NEXT_OFFSET)


class JobsPublic(BaseModel):
    data: list[JobPublic] = Field(description="One page of jobs, newest first.")
    count: int = Field(description="Total number of jobs that match (all of the model's, for /models/{model_id}/jobs; "
                                   "under NN_TENANCY, of the jobs this key sees).")
    next_offset: int | None = Field(None, description=NEXT_OFFSET)


def page(fetch: Callable[[int, int], tuple[list, int]], public: Callable[[object], BaseModel], key: Callable[[object], str],
         offset: int, limit: int, budget: int) -> Response:
    """The JSON page ``{"data", "count", "next_offset"}`` from ``offset``: ``fetch(offset, limit)`` gives records and
    the total count, ``public(record)`` an item's schema, ``key(record)`` its id. Each read after the first starts
    one record early: a write between two reads moved the rows (a job submitted: one item twice), and the page
    then ends where it got to rather than repeat or skip one."""
    items, size, position, count, last = [], 0, offset, 0, None
    while len(items) < limit:
        fits = FIRST if not items else max(1, (budget - size) * len(items) // size)  # items of the size seen so far
        asked = min(CHUNK, fits, limit - len(items))
        if last is None:
            records, count = fetch(position, asked)
        else:
            records, count = fetch(position - 1, asked + 1)
            if not records or key(records[0]) != last:
                return _answer(items, count, position)
            records = records[1:]
        for record in records:
            item = public(record).model_dump_json().encode()
            if items and size + len(item) > budget:
                return _answer(items, count, position)
            items.append(item)
            size, position, last = size + len(item), position + 1, key(record)
        if len(records) < asked:
            break
    return _answer(items, count, position if position < count else None)


def _answer(items: list[bytes], count: int, next_offset: int | None) -> Response:
    tail = b'],"count":' + orjson.dumps(count) + b',"next_offset":' + orjson.dumps(next_offset) + b"}"
    return Response(content=b'{"data":[' + b",".join(items) + tail, media_type="application/json")
