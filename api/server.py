"""How `python main.py` runs uvicorn: its HTTP parser, bounds on slow and idle clients, and the log format.

Requests are parsed by httptools (llhttp, in C): a request head costs about a tenth of h11's pure Python,
which was the largest part of a small request (a raw ASGI app answered 8,800 req/s under `wrk` on h11 and
29,000 on httptools on the 2-core machine; p50 of a 1-sample POST 0.58 ms against 0.49 ms).

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that never
finishes its request headers (slowloris) stays open for ever: its timer is only armed after a response,
and every byte received disarms it. `BoundedHeadProtocol` gives each request's head a deadline
(NN_HEADER_TIMEOUT, from the connection or from the previous response) and a size (MAX_HEAD_BYTES: uvicorn's
h11 bound, which httptools does not have). A body that stops arriving was waited for as long: the app's
`receive` has no deadline. A request body that goes NN_BODY_TIMEOUT s without a byte, while the service
waits for it (not while reading is paused because the app is behind), is answered 408 and its connection
closed. `limit_concurrency` (NN_MAX_CONNECTIONS) answers 503 past
that many connections and requests. A reverse proxy in front should still bound clients itself (README:
"Slow clients and reverse proxies").
"""

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from api.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_HEAD_BYTES = 16 * 1024  # request line and headers; past it the request is a 400 and the connection closes
BODY_BUFFER_BYTES = 1024 * 1024  # request body read ahead of the app before the socket's reading pauses


class HeadTooLarge(Exception):
    """Raised from a parser callback: httptools stops and uvicorn answers 400 and closes the connection."""


REQUEST_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
                   b"content-length: %d\r\n\r\n%s")


class BoundedHeadProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request head is not complete within
    `header_timeout` s, refusing a head over MAX_HEAD_BYTES, and answering 408 to a body that goes `body_timeout`
    s without a byte."""

    header_timeout = 10.0
    body_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_seen = 0.0
        self._head_bytes = 0
        super().connection_made(transport)
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()

    def _count(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise HeadTooLarge(f"a request head over {MAX_HEAD_BYTES} bytes")

    def on_message_begin(self) -> None:
        self._head_bytes = 0
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and the line end
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._cancel_head_timer()  # the head arrived in time
        super().on_headers_complete()
        self._body_seen = self.loop.time()
        self._cancel_body_timer()  # a pipelined request's head: one timer, for the newest body
        self._body_cycle = self.cycle
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if getattr(self, "_body_timer", None) is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        """Closes the connection when its body has been waited for `body_timeout` s since its last byte; a body
        already read in full, a paused socket (the app is behind) or a client waiting for 100 Continue is no
        stall, and its timer waits on. One timer per period, not one per chunk."""
        self._body_timer, cycle = None, self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete or self.transport.is_closing():
            return
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._body_seen = self.loop.time()
        left = self._body_seen + self.body_timeout - self.loop.time()
        if left > 0:
            self._body_timer = self.loop.call_later(left, self._body_timed_out)
            return
        self.logger.debug("closing a connection whose request body sent nothing for %s s", self.body_timeout)
        if not cycle.response_started:
            detail = (b'{"detail":"the request body stopped arriving: nothing for %g s (NN_BODY_TIMEOUT); send the '
                      b'whole body, as long as its Content-Length says"}' % self.body_timeout)
            self.transport.write(REQUEST_TIMEOUT % (len(detail), detail))
        self.transport.close()

    def on_body(self, body: bytes) -> None:
        """uvicorn's, pausing reads once BODY_BUFFER_BYTES wait for the app instead of 64 KiB: a 108 MB upload
        paused and resumed the socket 1,700 times, and its receive took 0.26 s instead of 0.19 s."""
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.body += body
        self._body_seen = self.loop.time()
        if len(self.cycle.body) > BODY_BUFFER_BYTES:
            self.flow.pause_reading()
        self.cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()  # the whole body arrived
        super().on_message_complete()

    def on_response_complete(self) -> None:
        # answered without reading all of its body; a pipelined request's timer (its cycle not answered) stays
        if getattr(self, "_body_cycle", None) is None or self._body_cycle.response_complete:
            self._cancel_body_timer()
        pipelined = bool(self.pipeline)  # a request whose head arrived already starts now
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` for this service."""
    protocol = type("BoundedHeadProtocol", (BoundedHeadProtocol,), {"header_timeout": settings.header_timeout,
                                                                    "body_timeout": settings.body_timeout})
    # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: any local client, or a proxy that passes
    # the header on, wrote the address (and more: `6.6.6.6 - "DELETE /models/iris ..."`) into the access log
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "http": protocol,
            "timeout_keep_alive": settings.keep_alive_timeout, "limit_concurrency": settings.max_connections,
            "proxy_headers": bool(settings.forwarded_allow_ips.strip()),
            "forwarded_allow_ips": settings.forwarded_allow_ips.strip() or None}


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
