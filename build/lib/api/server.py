"""How `python main.py` runs uvicorn: bounds on slow and idle clients, and the log format.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but a connection that never
finishes its request headers (slowloris) stays open for ever: its timer is only armed after a response,
and every byte received disarms it. `HeaderTimeoutProtocol` gives each request's head a deadline
(NN_HEADER_TIMEOUT, from the connection or from the previous response), and `limit_concurrency`
(NN_MAX_CONNECTIONS) answers 503 past that many connections and requests. A reverse proxy in front
should still bound clients itself (README: "Slow clients and reverse proxies").
"""

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

from api.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head is not complete within `header_timeout` s."""

    header_timeout = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._waiting_after = self.cycle  # a new cycle object means the next request's head has arrived
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if getattr(self, "_head_timer", None) is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_arrived(self) -> None:
        if self._head_timer is not None and self.cycle is not self._waiting_after:
            self._cancel_head_timer()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers took over %s s", self.header_timeout)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._head_arrived()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_head_timer()  # the next request's head gets the same deadline
        super().on_response_complete()
        self._head_arrived()  # a pipelined request was already waiting

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of `uvicorn.run` for this service."""
    protocol = type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": settings.header_timeout})
    return {"host": settings.host, "port": settings.port, "log_level": settings.log_level, "http": protocol,
            "timeout_keep_alive": settings.keep_alive_timeout, "limit_concurrency": settings.max_connections,
            "h11_max_incomplete_event_size": 16 * 1024}  # bytes of a request head (uvicorn's default, stated)


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format=LOG_FORMAT)
