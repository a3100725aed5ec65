"""Receiving a file body (raw, or the multipart field ``file``) onto disk while it streams in.

The event loop only collects the request's chunks into batches of about a megabyte. Behind it, two stages
run on a shared pool of threads (``_Pipeline``): one parses multipart and writes each batch, calling
fdatasync every FLUSH_BYTES so that the disk writes while the rest arrives rather than all in the publish's
fsync; then it hands the file's bytes of the batch to the other, which hashes them. Each stage runs an
upload's batches in order (``_Strand``) without waiting for the loop, and the loop waits only when DEPTH
batches of its upload, or NN_UPLOAD_BUFFER_MB of all uploads, are behind it: memory holds at most about
that plus two batches per upload, whatever the files' sizes and however many arrive at once.

A 189 MB NPZ on the 2-core VM: hashing and writing on one thread, awaited by the loop batch by batch, took
0.42-0.47 s, 0.09 s of it the final fsync; the two stages take 0.32-0.34 s. SHA-256 (about 1 GB/s here)
sets their pace; they and the loop together keep both cores busy.
"""

import asyncio
import hashlib
import os
import re
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Callable

from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header

from api.dataset_formats import ZIP_MAGIC
from api.errors import InvalidInput, PayloadTooLarge, StoreUnavailable
from api.settings import MiB, Settings

BATCH_BYTES = 1 << 20  # bytes collected on the event loop before a thread writes them
# what a chunk costs beyond its payload (its bytes object, its list slot), counted in a batch's size: a body that
# arrives a few bytes at a time closes its batches early, instead of a batch of 2-byte chunks holding 20x its
# payload, and counts what it holds towards NN_UPLOAD_BUFFER_MB
CHUNK_COST = 64
FLUSH_BYTES = 16 << 20  # bytes written between two fdatasync calls of the writing thread
_datasync = getattr(os, "fdatasync", os.fsync)  # macOS and Windows have no fdatasync
MEDIA_FORMATS = {"text/csv": "csv", "application/csv": "csv", "text/plain": "csv", "application/json": "json",
                 "application/x-npz": "npz", "application/zip": "npz", "application/x-zip-compressed": "npz"}
SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".json": "json"}
# batches of all uploads behind the loop at once, plus one each: NN_UPLOAD_BUFFER_MB's default
IN_FLIGHT_BYTES = int(Settings.model_fields["upload_buffer_mb"].default * MiB)
# the threads of every upload's two stages; more than the cores, as a writing thread may wait in fdatasync
_pool = ThreadPoolExecutor(max(8, 4 * (os.cpu_count() or 1)), thread_name_prefix="upload")


class _Held:
    """Bytes of the batches pushed behind the loop whose write or hash has not ended, across uploads (and event
    loops)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.lock = threading.Lock()

    def add(self, size: int) -> None:
        with self.lock:
            self.bytes += size


held = _Held()


@dataclass
class Upload:
    path: Path  # the received file
    size: int  # its bytes
    sha256: str | None  # of its bytes, when it may be kept as uploaded (an NPZ)
    format_hint: str | None  # from the Content-Type, the part's Content-Type or its file name
    newlines: int | None = None  # its \n bytes, counted as they streamed in when it may be CSV


def _format_of(media_type: str | None, filename: str | None = None) -> str | None:
    if filename:
        for suffix, fmt in SUFFIX_FORMATS.items():
            if filename.lower().endswith(suffix):
                return fmt
    return MEDIA_FORMATS.get((media_type or "").split(";")[0].strip().lower())


def is_json(content_type: str) -> bool:
    return _format_of(content_type) == "json"


class _Sink:
    """Writes the body (or the ``file`` part of a multipart body) to ``path``, hashing it on the way."""

    def __init__(self, path: Path, content_type: str, asked: str | None):
        self.path = path
        self.digest = hashlib.sha256()
        self.size = self.unflushed = 0
        self.pieces: list[bytes] = []  # the file's bytes written by the current feed, for the hashing thread
        self.asked = asked
        self.hint = _format_of(content_type)
        self.hashing = self._may_be_kept()
        self.newlines = 0 if self._may_be_csv() else None
        self.parser = None
        media, options = parse_options_header(content_type)
        if media.startswith(b"multipart/") and media != b"multipart/form-data":  # it was read as a CSV file
            raise InvalidInput(f"a {media.decode('latin-1')} body is not read; send the file as the raw body, or as the "
                               "field `file` of a multipart/form-data body (curl -F file=@data.csv)")
        if media == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise InvalidInput("a multipart/form-data body needs a boundary in its Content-Type")
            self.boundary = boundary.decode("latin-1")[:80]
            self.hint = None
            self.found = self.ended = False
            self.files = 0  # parts named `file`: the first is the upload, a second one would be lost
            self.in_file = False
            self.headers: dict[bytes, bytes] = {}
            self.field = self.value = b""
            self.parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end})
        try:  # last: a Content-Type refused above leaves no file open
            self.handle = open(path, "wb")
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> StoreUnavailable:
        """A disk that refuses the upload (full, EFBIG, EIO) is the server's failure, not the body's: 503."""
        return StoreUnavailable(f"the upload cannot be written to {self.path.parent} ({exc.strerror}); the operator "
                                "frees space there or sets NN_DATASET_DIR to a writable folder")

    def close(self) -> None:
        """Closes the file, idempotent; after a failure a second error while flushing it adds nothing."""
        with suppress(OSError):
            self.handle.close()

    def _unparsable(self, exc: Exception) -> InvalidInput:
        """The parser's words (bytes as numbers: 'Expected boundary character 45, got 104') as characters, and
        what a body must look like."""
        words = re.sub(r"(character|got) (\d+)", lambda m: f"{m[1]} {chr(int(m[2]))!r}", str(exc))
        return InvalidInput(f"the multipart/form-data body cannot be parsed ({words}): it begins with the line "
                            f"--{self.boundary} (the boundary of its Content-Type), each part has headers such as "
                            'Content-Disposition: form-data; name="file"; filename="data.csv", and it ends with '
                            f"--{self.boundary}--. Let the HTTP client build it (curl -F file=@data.csv)")

    # multipart callbacks
    def _part_begin(self) -> None:
        self.headers, self.field, self.value = {}, b"", b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def _header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field = self.value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.headers.get(b"content-disposition", b""))
        self.files += options.get(b"name") == b"file"
        self.in_file = options.get(b"name") == b"file" and not self.found
        if self.in_file:
            self.found = True
            filename = options.get(b"filename", b"").decode("utf-8", "replace")
            self.hint = _format_of(self.headers.get(b"content-type", b"").decode("latin-1"), filename)
            self.hashing = self._may_be_kept()
            self.newlines = 0 if self._may_be_csv() else None

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self.in_file:
            self._write(data[start:end])

    def _part_end(self) -> None:
        self.in_file = False

    def _end(self) -> None:
        self.ended = True

    def _may_be_kept(self) -> bool:
        """Only an NPZ upload can be kept as uploaded, so only then is its hash the dataset's."""
        return (self.asked or self.hint) not in ("csv", "json")

    def _may_be_csv(self) -> bool:
        return (self.asked or self.hint) not in ("npz", "json")

    def _write(self, data: bytes) -> None:
        if self.hashing:
            self.pieces.append(data)
        if self.newlines is not None:  # a CSV's rows, counted while the bytes pass (not in a second read)
            self.newlines += data.count(b"\n")
        try:
            self.handle.write(data)
        except OSError as exc:
            raise self._unwritable(exc) from None
        self.size += len(data)
        self.unflushed += len(data)

    def feed(self, chunks: list[bytes]) -> list[bytes]:
        """Writes a batch of the body; returns the file's bytes in it, to be hashed (in order) by ``hash``."""
        self.pieces = []
        for data in chunks:
            if self.parser is None:
                self._write(data)
                continue
            try:
                self.parser.write(data)
            except StoreUnavailable:  # raised by _write, from the parser's callback
                raise
            except Exception as exc:  # python-multipart's MultipartParseError and friends
                raise self._unparsable(exc) from None
        if self.unflushed >= FLUSH_BYTES:  # to disk while the rest arrives, not all in the publish's fsync
            try:
                self.handle.flush()
                _datasync(self.handle.fileno())
            except OSError as exc:
                raise self._unwritable(exc) from None
            self.unflushed = 0
        return self.pieces

    def hash(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.digest.update(piece)

    def finish(self) -> None:
        """Ends the multipart parse (with the pipeline drained) and closes the file."""
        try:
            if self.parser is not None:
                self.pieces = []
                self.parser.finalize()  # says nothing of a body cut short: the closing boundary does
                self.hash(self.pieces)
                if not self.ended:
                    raise InvalidInput("the multipart/form-data body is truncated: it has no closing boundary "
                                       f"(--{self.boundary}--), so the file may be cut short; send the whole body again")
                if not self.found:
                    raise InvalidInput("the multipart/form-data body has no field named `file`; send the file as "
                                       "-F file=@data.npz (curl) or with the file button of /docs")
                if self.files > 1:
                    raise InvalidInput(f"the multipart/form-data body has {self.files} fields named `file`; an upload "
                                       "is one file: send each in a request of its own")
            self.handle.close()  # flushes: a disk that refuses the last bytes refuses them here
        except OSError as exc:
            raise self._unwritable(exc) from None
        finally:
            self.close()


class _Strand:
    """Runs the calls submitted to it one at a time, in order, on a thread of the shared pool: an upload's
    writes (or its hashes) keep their order without a thread of their own, and without waiting for the loop
    between two. A thread runs a strand's calls until none is left (the loop lets no more than DEPTH of an
    upload's batches queue), then serves another strand."""

    def __init__(self) -> None:
        self.calls: deque[tuple[Future, Callable, tuple]] = deque()
        self.lock = threading.Lock()
        self.scheduled = False

    def submit(self, fn: Callable, *args) -> Future:
        future: Future = Future()
        with self.lock:
            self.calls.append((future, fn, args))
            if self.scheduled:
                return future
            self.scheduled = True
        _pool.submit(self._run)
        return future

    def _run(self) -> None:
        while True:
            with self.lock:
                if not self.calls:
                    self.scheduled = False
                    return
                future, fn, args = self.calls.popleft()
            if future.set_running_or_notify_cancel():  # False: cancelled after a failure
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:
                    future.set_exception(exc)


class _Pipeline:
    """The two stages behind the loop: batch k is written on one strand, which hands its bytes straight to the
    hashing strand, so neither waits for the loop; the loop waits only when DEPTH batches of this upload, or
    ``in_flight`` bytes of all uploads (NN_UPLOAD_BUFFER_MB), are behind it. A batch's bytes leave ``held`` as
    its last stage ends, not when the loop next looks: an upload whose client stalls holds nothing it has
    written. (With the loop passing each batch from one stage to the next, a batch waited about 1 ms for the
    loop, and the two stages ran no faster than one thread doing both.)"""

    DEPTH = 8  # batches written or hashed behind the loop; 2, 4 and 16 were no faster

    def __init__(self, sink: _Sink, in_flight: int):
        self.sink, self.in_flight, self.writes, self.hashes = sink, in_flight, _Strand(), _Strand()
        self.behind: deque[tuple[Future, int]] = deque()  # per batch: its write (whose result is its hash), bytes

    def _write(self, batch: list[bytes], size: int) -> Future | None:
        try:
            pieces = self.sink.feed(batch)
        except BaseException:
            held.add(-size)
            raise
        if not pieces:
            held.add(-size)
            return None
        return self.hashes.submit(self._hash, pieces, size)

    def _hash(self, pieces: list[bytes], size: int) -> None:
        try:
            self.sink.hash(pieces)
        finally:
            held.add(-size)

    @staticmethod
    async def _result(future: Future):
        return future.result() if future.done() else await asyncio.wrap_future(future)

    async def _settle(self) -> None:
        """Waits for the oldest batch's write, then its hash; raises what either raised."""
        hashed = await self._result(self.behind[0][0])
        if hashed is not None:
            await self._result(hashed)
        self.behind.popleft()

    def _must_wait(self, size: int) -> bool:
        if not self.behind:
            return False  # one batch per upload whatever the others hold: each keeps moving
        oldest = self.behind[0][0]
        return (len(self.behind) >= self.DEPTH or held.bytes + size > self.in_flight
                or oldest.done() and oldest.exception() is not None)

    async def push(self, batch: list[bytes], size: int) -> None:
        """``size``: the batch's bytes plus CHUNK_COST per chunk, as ``receive`` counted them."""
        while self._must_wait(size):
            await self._settle()
        if batch:
            held.add(size)
            self.behind.append((self.writes.submit(self._write, batch, size), size))

    async def drain(self) -> None:
        while self.behind:
            await self._settle()

    def stop(self) -> None:
        """After a failure (run in a thread): cancels the batches not started and waits for the ones running, so
        the file is closed under no thread."""
        for future, size in self.behind:
            if future.cancel():  # never to run: its bytes leave here
                held.add(-size)
        written = [future for future, _ in self.behind]
        wait(written)
        for future, size in self.behind:
            hashed = None if future.cancelled() or future.exception() else future.result()
            if hashed is not None:
                if hashed.cancel():
                    held.add(-size)
                wait([hashed])
        self.behind.clear()


async def receive(chunks: AsyncIterator[bytes], content_type: str, content_length: str | None, path: Path,
                  limit: int, limit_name: str, asked: str | None = None, in_flight: int = IN_FLIGHT_BYTES) -> Upload:
    """Streams the body to ``path``; PayloadTooLarge as soon as it passes ``limit`` bytes. ``in_flight``: the
    bytes of all uploads' batches the writing and hashing threads may have behind the loop (plus one each)."""
    too_large = PayloadTooLarge(f"the upload is larger than {limit} bytes ({limit_name}); split the data into "
                                "several datasets or ask the operator to raise the limit")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    sink = await run_in_threadpool(_Sink, path, content_type, asked)
    pipeline = _Pipeline(sink, in_flight)
    received, batch, pending = 0, [], 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise too_large
            batch.append(chunk)
            pending += len(chunk) + CHUNK_COST
            if pending >= BATCH_BYTES:
                await pipeline.push(batch, pending)
                batch, pending = [], 0
        await pipeline.push(batch, pending)
        await pipeline.drain()
    except BaseException:
        try:
            await run_in_threadpool(pipeline.stop)
        finally:
            sink.close()
        raise
    try:
        await run_in_threadpool(sink.finish)
    finally:
        sink.close()  # finish closes it, unless a cancel came before its thread started
    if sink.size == 0:
        raise InvalidInput("the request holds no file; send an NPZ, CSV or JSON file as the raw body or as the "
                           "multipart field `file`")
    return Upload(path=path, size=sink.size, sha256=sink.digest.hexdigest() if sink.hashing else None,
                  format_hint=sink.hint, newlines=sink.newlines)


def resolve_format(upload: Upload, asked: str | None) -> str:
    """?format= first, then the Content-Type or file name, then the first bytes of the file."""
    if asked:
        return asked
    if upload.format_hint:
        return upload.format_hint
    with open(upload.path, "rb") as handle:
        head = handle.read(64)
    if head.startswith(ZIP_MAGIC):  # not b"PK" alone: a CSV header may begin "PK_id,..."
        return "npz"
    # a JSON dataset is an object, perhaps after a UTF-8 BOM; a CSV header may begin "[mm],..."
    if head.removeprefix(b"\xef\xbb\xbf").lstrip().startswith(b"{"):
        return "json"
    return "csv"
