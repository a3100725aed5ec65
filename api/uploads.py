"""Receiving a file body (raw, or the multipart field ``file``) onto disk while it streams in.

The event loop only collects the request's chunks; parsing multipart, hashing and writing happen in a
worker thread, about a megabyte at a time, so memory holds about one batch whatever the file size.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import InvalidInput, PayloadTooLarge

BATCH_BYTES = 1 << 20  # bytes collected on the event loop before a thread writes them
MEDIA_FORMATS = {"text/csv": "csv", "application/csv": "csv", "text/plain": "csv", "application/json": "json",
                 "application/x-npz": "npz", "application/zip": "npz", "application/x-zip-compressed": "npz"}
SUFFIX_FORMATS = {".npz": "npz", ".csv": "csv", ".json": "json"}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip's first member, or the end record of an empty one


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
        self.handle = open(path, "wb")
        self.digest = hashlib.sha256()
        self.size = 0
        self.asked = asked
        self.hint = _format_of(content_type)
        self.hashing = self._may_be_kept()
        self.newlines = 0 if self._may_be_csv() else None
        self.parser = None
        media, options = parse_options_header(content_type)
        if media == b"multipart/form-data":
            boundary = options.get(b"boundary")
            if not boundary:
                raise InvalidInput("a multipart/form-data body needs a boundary in its Content-Type")
            self.boundary = boundary.decode("latin-1")[:80]
            self.hint = None
            self.found = self.ended = False
            self.in_file = False
            self.headers: dict[bytes, bytes] = {}
            self.field = self.value = b""
            self.parser = MultipartParser(boundary, {
                "on_part_begin": self._part_begin, "on_header_field": self._header_field,
                "on_header_value": self._header_value, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end, "on_end": self._end})

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
            self.digest.update(data)
        if self.newlines is not None:  # a CSV's rows, counted while the bytes pass (not in a second read)
            self.newlines += data.count(b"\n")
        self.handle.write(data)
        self.size += len(data)

    def feed(self, data: bytes) -> None:
        if self.parser is None:
            self._write(data)
            return
        try:
            self.parser.write(data)
        except Exception as exc:  # python-multipart's MultipartParseError and friends
            raise InvalidInput(f"the multipart/form-data body cannot be parsed: {exc}") from None

    def finish(self) -> None:
        try:
            if self.parser is not None:
                self.parser.finalize()  # says nothing of a body cut short: the closing boundary does
                if not self.ended:
                    raise InvalidInput("the multipart/form-data body is truncated: it has no closing boundary "
                                       f"(--{self.boundary}--), so the file may be cut short; send the whole body again")
                if not self.found:
                    raise InvalidInput("the multipart/form-data body has no field named `file`; send the file as "
                                       "-F file=@data.npz (curl) or with the file button of /docs")
        finally:
            self.handle.close()


async def receive(chunks: AsyncIterator[bytes], content_type: str, content_length: str | None, path: Path,
                  limit: int, limit_name: str, asked: str | None = None) -> Upload:
    """Streams the body to ``path``; PayloadTooLarge as soon as it passes ``limit`` bytes."""
    too_large = PayloadTooLarge(f"the upload is larger than {limit} bytes ({limit_name}); split the data into "
                                "several datasets or ask the operator to raise the limit")
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise too_large
    sink = await run_in_threadpool(_Sink, path, content_type, asked)
    received, batch, pending = 0, [], 0
    try:
        async for chunk in chunks:
            received += len(chunk)
            if received > limit:
                raise too_large
            batch.append(chunk)
            pending += len(chunk)
            if pending >= BATCH_BYTES:
                data, batch, pending = b"".join(batch), [], 0
                await run_in_threadpool(sink.feed, data)
        if batch:
            await run_in_threadpool(sink.feed, b"".join(batch))
    except BaseException:
        sink.handle.close()
        raise
    await run_in_threadpool(sink.finish)
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
    if head.lstrip().startswith(b"{"):  # a JSON dataset is an object; a CSV header may begin "[mm],..."
        return "json"
    return "csv"
