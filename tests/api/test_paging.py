"""Lists within NN_MAX_LIST_BYTES (api/paging.py): a page stops before the budget, says where the next begins, and
holds about the budget in memory whatever `limit` asks."""

import json
import tracemalloc

from pydantic import BaseModel

from api.paging import page
from tests.api.conftest import running_app

NAMES = 4096  # classes, each name 200 characters: a summary of 1.7 MB (the names are in it twice)


def create_wide(client, model_id):
    names = [f"{i:05d}" + "x" * 195 for i in range(NAMES)]
    body = {"model_id": model_id, "layer_sizes": [1, NAMES], "activations": ["softmax"], "class_names": names}
    assert client.post("/models", json=body).status_code == 201


def test_a_page_of_large_summaries_stops_at_the_budget_and_says_where_the_next_begins(tmp_path):
    with running_app(tmp_path, workers=0, max_list_bytes=4 << 20) as client:
        for i in range(5):
            create_wide(client, f"wide{i}")
        seen, offset, pages = [], 0, 0
        while offset is not None:
            page = client.get("/models", params={"offset": offset, "limit": 500}).json()
            assert page["count"] == 5 and 1 <= len(page["data"]) <= 2  # 1.7 MB each: two fit in 4 MiB
            seen += [m["model_id"] for m in page["data"]]
            offset, pages = page["next_offset"], pages + 1
        assert seen == [f"wide{i}" for i in range(5)] and pages == 3
        small = client.get("/models", params={"limit": 2}).json()  # the limit still counts
        assert len(small["data"]) == 2 and small["next_offset"] == 2
        assert client.get("/models", params={"offset": 4}).json()["next_offset"] is None


def test_listing_large_summaries_holds_about_the_budget_in_memory(tmp_path):
    """GET /models?limit=500 of 200 such models took 333 MB of body and 1.47 GB of RSS (12 here: 20 MB of body)."""
    with running_app(tmp_path, workers=0, max_list_bytes=1 << 20) as client:
        for i in range(12):
            create_wide(client, f"wide{i}")
        tracemalloc.start()
        try:
            page = client.get("/models", params={"limit": 500})
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert page.status_code == 200 and len(page.json()["data"]) == 1 and page.json()["next_offset"] == 1
        assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB"


class Item(BaseModel):
    id: str


def test_a_write_between_two_reads_of_a_page_ends_it_rather_than_repeat_an_item():
    """A page is read in parts; a job submitted between two (newest first: every row moves one down) showed one job
    twice in a page of 30. Each read starts one record early and the page ends where the rows moved."""
    rows = [f"job{i:03d}" for i in range(40, 0, -1)]  # newest first
    reads, submit = [], ["job041"]

    def fetch(at, n):
        reads.append((at, n))
        if len(reads) == 2 and submit:
            rows.insert(0, submit.pop())  # submitted between the first read and the second
        return rows[at:at + n], len(rows)

    answer = json.loads(page(fetch, lambda r: Item(id=r), lambda r: r, 0, 30, 1 << 20).body)
    ids = [item["id"] for item in answer["data"]]
    assert len(ids) == len(set(ids)) == answer["next_offset"] == 8 and ids[-1] == "job033"
    reads.clear()
    rows[:] = [f"m{i}" for i in range(250)]
    answer = json.loads(page(fetch, lambda r: Item(id=r), lambda r: r, 0, 250, 1 << 20).body)
    assert [item["id"] for item in answer["data"]] == rows and answer["next_offset"] is None
    assert len(reads) == 4  # 8, then 100 at most a read: few store calls for a page of small items
