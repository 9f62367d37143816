"""serve.py's HTTP connections: uvicorn's httptools protocol with the limits it lacks.

uvicorn times out idle keep-alive connections, but not a request whose headers trickle in or never
come, so a thousand such connections stay open for ever. This protocol gives every request's
headers a deadline (408), caps the open connections (503), and answers malformed HTTP with the same
``{"error": ...}`` JSON as every other refusal instead of uvicorn's plain text.
"""
from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Optional, Type

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def guarded_protocol(header_timeout: float, max_connections: int) -> Type[HttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits (``--header_timeout``,
    ``--max_connections``)."""

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _deadline: Optional[asyncio.TimerHandle] = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self._refuse(503, f"over --max_connections {max_connections} open connections; try again later")
                return
            self._arm()

        def connection_lost(self, exc: Optional[Exception]) -> None:
            self._disarm()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()          # each request of a keep-alive connection gets its own deadline

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            self._refuse(400, f"malformed HTTP request ({msg.rstrip('.').lower()})")

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self._refuse(408, f"the request's headers did not arrive within --header_timeout {header_timeout:g} s")

        def _refuse(self, status: int, message: str) -> None:
            """Answer ``{"error": message}`` with ``status`` and close the connection."""
            self._disarm()
            body = json.dumps({"error": message}).encode("utf-8")
            head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode("latin-1")
            self.transport.write(head + body)
            self.transport.close()

    return GuardedHttpToolsProtocol
