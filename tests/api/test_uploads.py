"""api/uploads.py: a body written and hashed by two stages behind the loop, in order, with memory bounded per
upload and across uploads, and every failure leaving the file closed and nothing held."""

import asyncio
import hashlib
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from api import uploads
from api.errors import InvalidInput, PayloadTooLarge, StoreUnavailable

BATCHES = 3 * uploads._Pipeline.DEPTH  # enough that the pipeline fills and drains more than once
BODY = os.urandom(BATCHES * uploads.BATCH_BYTES + 12_345)


def chunked(data: bytes, size: int = 100_003):
    """The body as the server hands it on: pieces of any size, here one that never divides a batch."""
    return [data[i:i + size] for i in range(0, len(data), size)]


async def stream(chunks, after=None):
    for index, chunk in enumerate(chunks):
        if after is not None:
            after(index)
        yield chunk


def receive(tmp_path, chunks, content_type="application/x-npz", limit=1 << 40, after=None) -> uploads.Upload:
    return asyncio.run(uploads.receive(stream(chunks, after), content_type, None, tmp_path / "upload", limit,
                                       "NN_MAX_DATASET_BYTES"))


def multipart(data: bytes, boundary: str = "XyZ") -> tuple[bytes, str]:
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.npz"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_body_of_many_batches_is_written_and_hashed_in_order_with_writeback_on_the_way(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(uploads, "FLUSH_BYTES", 4 * uploads.BATCH_BYTES)
    monkeypatch.setattr(uploads, "_datasync", lambda fd: flushed.append(os.fstat(fd).st_size))
    upload = receive(tmp_path, chunked(BODY))
    assert (tmp_path / "upload").read_bytes() == BODY
    assert upload.size == len(BODY) and upload.sha256 == hashlib.sha256(BODY).hexdigest()
    assert len(flushed) >= BATCHES // 5  # every 4 batches or so (a batch is a chunk past BATCH_BYTES)
    assert flushed == sorted(flushed) and flushed[-1] < len(BODY)  # on the way, not once at the end
    assert uploads.held.bytes == 0


def test_the_file_part_of_a_multipart_body_is_hashed_alone(tmp_path):
    body, content_type = multipart(BODY)
    upload = receive(tmp_path, chunked(body, 65_536), content_type)
    assert (tmp_path / "upload").read_bytes() == BODY
    assert upload.sha256 == hashlib.sha256(BODY).hexdigest() and upload.format_hint == "npz"


def test_the_loop_never_runs_more_than_depth_batches_ahead_of_the_writes(tmp_path, monkeypatch):
    """Memory holds about DEPTH + 2 batches whatever the file size: each chunk the loop asks for finds every
    batch but the last DEPTH written. The first write waits until the loop has gone as far as it may."""
    chunk = uploads.BATCH_BYTES  # one chunk, one batch
    written, allowed_ahead = [], threading.Event()
    feed = uploads._Sink.feed

    def counted_feed(sink, batch):
        allowed_ahead.wait()
        result = feed(sink, batch)
        written.append(len(batch))
        return result

    def check(index: int) -> None:
        pushed = index  # batches handed to the pipeline before this chunk
        assert len(written) >= pushed - uploads._Pipeline.DEPTH, (pushed, len(written))
        if pushed == uploads._Pipeline.DEPTH:
            allowed_ahead.set()  # the loop got DEPTH batches ahead without waiting; now it must

    monkeypatch.setattr(uploads._Sink, "feed", counted_feed)
    upload = receive(tmp_path, chunked(BODY, chunk), after=check)
    assert upload.size == len(BODY) and len(written) == len(chunked(BODY, chunk))


def test_a_multipart_body_broken_deep_inside_is_a_422_with_the_file_closed_and_nothing_held(tmp_path):
    body, content_type = multipart(BODY)
    broken = body[:len(body) // 2] + b"\r\n--XyZ\r\nnot a header line\r\n\r\n" + body[len(body) // 2:]
    with pytest.raises(InvalidInput, match="multipart/form-data body"):
        receive(tmp_path, chunked(broken), content_type)
    assert uploads.held.bytes == 0
    os.remove(tmp_path / "upload")  # closed: removable, and nothing writes it again
    assert not (tmp_path / "upload").exists()


def test_a_body_past_the_limit_stops_with_nothing_held(tmp_path):
    with pytest.raises(PayloadTooLarge, match="NN_MAX_DATASET_BYTES"):
        receive(tmp_path, chunked(BODY), limit=len(BODY) // 2)
    assert (tmp_path / "upload").stat().st_size <= len(BODY) // 2 and uploads.held.bytes == 0


def test_uploads_at_once_hold_at_most_the_upload_buffer_plus_one_batch_each(tmp_path, monkeypatch):
    """However many uploads arrive at once, the batches behind the loop stay under NN_UPLOAD_BUFFER_MB plus one
    per upload, and every upload still moves. The writes wait until every upload has gone as far as it may:
    the first to the limit, the other two one batch each."""
    batch = uploads.BATCH_BYTES + uploads.CHUNK_COST  # a batch of one chunk, as counted
    limit = 3 * batch
    reached, feed, most = threading.Event(), uploads._Sink.feed, [0]

    def held_feed(sink, batch):
        reached.wait()
        return feed(sink, batch)

    def check(index: int) -> None:
        most[0] = max(most[0], uploads.held.bytes)
        assert uploads.held.bytes <= limit + 3 * batch
        if uploads.held.bytes >= limit + 2 * batch:
            reached.set()

    async def three_at_once():
        bodies = [BODY[:12 * uploads.BATCH_BYTES + n] for n in (1, 2, 3)]
        return await asyncio.gather(*(uploads.receive(stream(chunked(body, uploads.BATCH_BYTES), check),
                                                      "application/x-npz", None, tmp_path / f"upload{i}", 1 << 40,
                                                      "NN_MAX_DATASET_BYTES", in_flight=limit)
                                       for i, body in enumerate(bodies)))

    monkeypatch.setattr(uploads._Sink, "feed", held_feed)
    done = asyncio.run(three_at_once())
    assert [u.sha256 for u in done] == [hashlib.sha256(BODY[:12 * uploads.BATCH_BYTES + n]).hexdigest() for n in (1, 2, 3)]
    assert most[0] == limit + 2 * batch and uploads.held.bytes == 0


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs Linux's /dev/full, a file every write to fails")
@pytest.mark.parametrize("multipart_body", [False, True])
def test_a_disk_that_refuses_the_upload_is_the_servers_503_not_the_bodys_422(multipart_body):
    """A write error (here ENOSPC) was a 500 for a raw body and, from the multipart parser's callback, a 422
    saying the body "cannot be parsed"."""
    body, content_type = multipart(BODY) if multipart_body else (BODY, "application/x-npz")
    before = open_files()
    with pytest.raises(StoreUnavailable, match=r"cannot be written to /dev \(No space left on device\)"):
        asyncio.run(uploads.receive(stream(chunked(body)), content_type, None, Path("/dev/full"), 1 << 40, "X"))
    assert uploads.held.bytes == 0 and open_files() == before


def test_a_refused_content_type_or_a_cancel_before_the_last_step_leaves_no_file_open(tmp_path, monkeypatch):
    before = open_files()
    with pytest.raises(InvalidInput, match="needs a boundary"):
        receive(tmp_path, [b"abc"], "multipart/form-data")
    assert open_files() == before
    handed = uploads.run_in_threadpool

    async def cancelled_before_finish(fn, *args):  # a cancel (a shutdown) as finish is handed to a thread
        if getattr(fn, "__name__", "") == "finish":
            asyncio.current_task().cancel()
        return await handed(fn, *args)

    monkeypatch.setattr(uploads, "run_in_threadpool", cancelled_before_finish)
    with pytest.raises(asyncio.CancelledError):
        receive(tmp_path, chunked(BODY))
    assert open_files() == before and uploads.held.bytes == 0


def test_a_body_in_tiny_chunks_is_held_at_about_its_payloads_size(tmp_path):
    """Chunks of a few bytes cost about 50 bytes each beyond their payload: counted in a batch's size, they
    close it early, and the batches behind the loop hold about a megabyte each, not 7x that."""
    data = BODY[:2 * uploads.BATCH_BYTES]

    async def trickle():  # new objects, as the server's chunks are
        for start in range(0, len(data), 8):
            yield data[start:start + 8]

    tracemalloc.start()
    try:
        upload = asyncio.run(uploads.receive(trickle(), "application/x-npz", None, tmp_path / "upload", 1 << 40, "X"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    # at most DEPTH batches behind and one being collected, each about a megabyte however small its chunks:
    # 13-19 MB when only the payload counted (1 MiB of 8-byte chunks is 7 MB of objects)
    assert peak < (uploads._Pipeline.DEPTH + 3) * uploads.BATCH_BYTES, peak


def test_an_upload_whose_client_stalls_holds_nothing_it_has_written(tmp_path):
    """A batch's bytes leave NN_UPLOAD_BUFFER_MB's count as its hash ends, not when its upload's loop next
    pushes: clients that send a few megabytes and stall no longer keep the other uploads to one batch each."""
    stalled, resume = asyncio.Event(), asyncio.Event()

    async def stalling():
        for index, chunk in enumerate(chunked(BODY, uploads.BATCH_BYTES)):
            if index == 5:
                stalled.set()
                await resume.wait()
            yield chunk

    async def scenario() -> tuple[int, uploads.Upload]:
        upload = asyncio.create_task(uploads.receive(stalling(), "application/x-npz", None, tmp_path / "upload",
                                                     1 << 40, "X"))
        await stalled.wait()
        for _ in range(3000):  # until the threads end the 5 batches (the test fails past 30 s)
            if uploads.held.bytes == 0:
                break
            await asyncio.sleep(0.01)
        during = uploads.held.bytes
        resume.set()
        return during, await upload

    during, upload = asyncio.run(scenario())
    assert during == 0 and upload.sha256 == hashlib.sha256(BODY).hexdigest() and uploads.held.bytes == 0
