"""The client data path without aiohttp's request machinery: key reads and writes and transactions
parsed by httptools (llhttp, the parser Node.js uses), on the node's own event loop.

Theory of operation
-------------------
aiohttp's own handling of a request, around a bare handler, costs about four times what parsing
with httptools and writing the answer straight to the transport does (bench/PROFILE.md, eighth
round), and it was the largest single cost of a write. The front serves the routes that carry the
load, `GET|PUT|DELETE /kv/{key}`, `POST /txn` and the seed's `GET|PUT|DELETE /{key}`, through
*the same handlers and middlewares* that aiohttp runs for them (`FrontRoutes` takes them from the
application's own router): validation, auth, error bodies, CORS headers, metrics and trace spans
are one code. Only the HTTP/1.1 framing is the front's.

Every connection starts in the front. A request it does not take in full hands the connection
over to aiohttp at that request's first byte, with every byte read since; aiohttp then serves it
and the rest of the connection as it would have from the start. The front takes a request only
when it is plain: HTTP/1.1 with keep-alive, one of the routes above (a first path segment that is
percent-encoded, reserved or empty is not, nor a key's `/history`), a head within 8 KiB with CRLF
line ends, a body with a Content-Length within the API's limit, and none of `Transfer-Encoding`,
`Content-Encoding`, `Expect` or `Upgrade`. Anything else, a parse error included, is aiohttp's to
answer, so the front never answers what it has not fully understood.

Requests on one connection are answered in order, one at a time; pipelined ones wait, and reading
pauses while more than a body's limit waits behind them. Each request runs in a task of its own
(which writes its answer and starts the next), in a fresh copy of the connection's context, so what
one sets in a context variable (the caller's credentials relayed to the leader) never reaches the
next. The connection's bounds (connections.py) hold as under aiohttp: deadlines for the
head and the body, the idle timeout between requests, the send timeout; at shutdown an idle
connection is closed at once, a busy one after its answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import httptools
from aiohttp import web
from aiohttp.web_urldispatcher import AbstractRoute, UrlMappingMatchInfo
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from .deadline import Deadline

if TYPE_CHECKING:
    from .connections import BoundedConnection

__all__ = ["FRONT", "Front", "FrontConfig", "FrontRoutes", "front_routes"]

MAX_HEAD_BYTES = 8190  # aiohttp's own bound on a request line or a header; a head over it is aiohttp's to judge
MAX_WAITING = 32  # pipelined requests taken ahead of their answers; past it, reading pauses
_REFUSED_HEADERS = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
RawHeaders = list[tuple[bytes, bytes]]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class FrontConfig:
    """What an application tells the front about its key routes (create_app sets it)."""

    max_body_bytes: int
    reserved: frozenset[str]  # first path segments that are never keys at the root


FRONT: web.AppKey[FrontConfig] = web.AppKey("front", FrontConfig)


@dataclass(frozen=True)
class FrontRoutes:
    """The front's routes: for each, the method's route as the router has it, and its handler
    wrapped in the application's middlewares."""

    config: FrontConfig
    kv: dict[str, tuple[AbstractRoute, Handler]]  # /kv/{key}, by method
    root: dict[str, tuple[AbstractRoute, Handler]]  # /{key}, by method
    txn: tuple[AbstractRoute, Handler]  # POST /txn

    def find(self, method: str, raw_path: str) -> tuple[AbstractRoute, Handler] | None:
        if raw_path.startswith("/kv/"):
            if method == "GET" and raw_path.endswith("/history"):
                return None
            return self.kv.get(method)
        if raw_path == "/txn":
            return self.txn if method == "POST" else None
        first = raw_path[1:].partition("/")[0]
        if not first or "%" in first or first in self.config.reserved:
            return None
        return self.root.get(method)


def front_routes(app: web.Application, config: FrontConfig, middlewares: Iterable[Callable[..., Any]]) -> FrontRoutes:
    """The routes of `app` that the front serves, each handler inside `middlewares` (outermost
    first), as aiohttp would call them."""
    by_path = {resource.canonical: {route.method: route for route in resource} for resource in app.router.resources()}
    chain = list(middlewares)

    def wrapped(route: AbstractRoute) -> tuple[AbstractRoute, Handler]:
        handler: Handler = route.handler
        for middleware in reversed(chain):
            handler = functools.partial(middleware, handler=handler)
        return route, handler

    def methods(path: str) -> dict[str, tuple[AbstractRoute, Handler]]:
        return {method: wrapped(route) for method, route in by_path[path].items() if method in ("GET", "PUT", "DELETE")}

    return FrontRoutes(config, methods("/kv/{key}"), methods("/{key}"), wrapped(by_path["/txn"]["POST"]))


class FrontRequest:
    """One request the front took whole: the part of aiohttp's `web.Request` that the key routes'
    handlers and the API's middlewares read (method, path and query, headers, body, the matched
    route, the request's own values), over what httptools parsed."""

    __slots__ = ("_body", "_headers", "_raw_headers", "_values", "match_info", "method", "rel_url", "transport")

    def __init__(self, method: str, rel_url: URL, raw_headers: RawHeaders, match_info: UrlMappingMatchInfo,
                 transport: asyncio.Transport, body: bytes) -> None:
        self.method = method
        self.rel_url = rel_url
        self._raw_headers = raw_headers
        self._headers: CIMultiDictProxy[str] | None = None
        self.match_info = match_info
        self.transport = transport
        self._body = body
        self._values: dict[Any, Any] = {}

    @property
    def headers(self) -> CIMultiDictProxy[str]:
        """Decoded when first read: a key read with auth and tracing off reads none."""
        if self._headers is None:
            self._headers = CIMultiDictProxy(CIMultiDict(
                (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
                for name, value in self._raw_headers))
        return self._headers

    @property
    def path(self) -> str:
        return self.rel_url.path

    @property
    def content_length(self) -> int | None:
        return len(self._body)

    async def read(self) -> bytes:
        return self._body

    def __getitem__(self, key: Any) -> Any:
        return self._values[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._values[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._values.get(key, default)


@dataclass(slots=True)
class _Taken:
    """A request parsed whole, waiting for its turn."""

    method: str
    raw_path: str
    raw_query: str
    headers: RawHeaders
    route: AbstractRoute
    handler: Handler
    body: bytes


class _HandOver(Exception):
    """Raised inside a parser callback: the request that began is aiohttp's."""


class Front(asyncio.Protocol):
    """One client connection, until it is handed to aiohttp (`connection.inner` is then aiohttp's)."""

    def __init__(self, routes: FrontRoutes, connection: BoundedConnection,
                 make_aiohttp: Callable[[], asyncio.Protocol]) -> None:
        self.routes = routes
        self.connection = connection
        self.make_aiohttp = make_aiohttp
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.unparsed = bytearray()  # from the first byte of the request being parsed
        self.waiting: deque[_Taken] = deque()
        self.serving: asyncio.Task | None = None
        self.handing_over = False  # the request being parsed is aiohttp's: parse nothing more
        self.closing = False  # shutdown: close once what was taken is answered
        self.write_paused: asyncio.Future | None = None
        self.reading_paused = False  # by _bound_reading (only the front pauses reading until it hands over)
        self.idle = Deadline()
        self.closed = asyncio.get_running_loop().create_future()
        self.context = contextvars.copy_context()  # each request's task runs in a copy of it
        self._start_request()

    def _start_request(self) -> None:
        self.url = bytearray()
        self.header_list: RawHeaders = []
        self.body: list[bytes] = []
        self.taken: tuple[AbstractRoute, Handler] | None = None
        self.method = ""
        self.head_end = -1
        self.body_bytes = 0

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's transports are no subclass)
        self._idle_from_now()

    def data_received(self, data: bytes) -> None:
        self.idle.clear()
        self.unparsed += data
        if self.handing_over:
            self._bound_reading()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.handing_over = True  # a bad request, or one the front does not take: aiohttp answers it
        if not self.handing_over and self.head_end < 0 and len(self.unparsed) > MAX_HEAD_BYTES:
            self.handing_over = True  # a head this long is for aiohttp to accept or refuse
        if self.handing_over:
            self._bound_reading()
            self._hand_over_when_idle()

    def eof_received(self) -> bool | None:
        return None  # as aiohttp: the transport closes; an answer in progress is dropped

    def pause_writing(self) -> None:
        if self.write_paused is None:
            self.write_paused = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self.write_paused is not None:
            self.write_paused.set_result(None)
            self.write_paused = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.idle.cancel()
        self.waiting.clear()
        if self.write_paused is not None:
            self.write_paused.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- httptools' callbacks ----------------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_list.append((name, value))

    def on_headers_complete(self) -> None:
        taken, length = self._takes()
        if taken is None:
            raise _HandOver()
        self.taken, self.body_bytes = taken, length
        self.head_end = self._head_end()
        if self.head_end < 0:
            raise _HandOver()
        if length and len(self.unparsed) < self.head_end + length:
            self.connection.head_arrived()  # the body's deadline runs from here

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.taken is not None and self.head_end >= 0
        end = self.head_end + self.body_bytes
        assert end <= len(self.unparsed), (end, len(self.unparsed))
        del self.unparsed[:end]
        route, handler = self.taken
        raw_path, _, raw_query = self.url.decode("ascii").partition("?")
        self.waiting.append(_Taken(self.method, raw_path, raw_query, self.header_list, route, handler,
                                   b"".join(self.body)))
        self._start_request()
        self._bound_reading()
        if self.serving is None:
            self._serve_next()

    # ---- what the front takes -------------------------------------------------------------------------

    def _takes(self) -> tuple[tuple[AbstractRoute, Handler] | None, int]:
        """The route and handler of the request whose head just ended, and its body's length; no
        route when the request is aiohttp's."""
        parser, url = self.parser, self.url
        self.method = parser.get_method().decode()
        if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return None, 0
        if not url.startswith(b"/") or not url.isascii() or b"#" in url:
            return None, 0
        length, lengths = 0, 0
        for name, value in self.header_list:
            lowered = name.lower()
            if lowered in _REFUSED_HEADERS:
                return None, 0
            if lowered == b"content-length":
                lengths += 1
                if not value.isdigit() or int(value) > self.routes.config.max_body_bytes:  # (ASCII digits only)
                    return None, 0
                length = int(value)
        if lengths > 1:
            return None, 0
        raw_path = url.partition(b"?")[0].decode("ascii")
        return self.routes.find(self.method, raw_path), length

    def _head_end(self) -> int:
        """Where the head that just ended stops in `unparsed` (after its blank line), or -1 when its
        lines do not all end in CRLF (then the byte count could be wrong: aiohttp takes it)."""
        start = 0
        while start < len(self.unparsed) and self.unparsed[start] in b"\r\n":  # blank lines before a request
            start += 1
        end = self.unparsed.find(b"\r\n\r\n", start)
        if end < 0 or end + 4 > MAX_HEAD_BYTES + start:
            return -1
        head = self.unparsed[start:end + 4]
        return end + 4 if head.count(b"\n") == head.count(b"\r\n") else -1

    # ---- answering ---------------------------------------------------------------------------------

    def _serve_next(self) -> None:
        """Answer the next waiting request in a task of its own, run in a fresh copy of the
        connection's context: what one request sets in a context variable never reaches the next.
        With none waiting, the connection goes idle, closes or is handed over."""
        if self.waiting:
            taken = self.waiting.popleft()
            self._bound_reading()
            self.serving = asyncio.get_running_loop().create_task(self._serve(taken), context=self.context.copy())
            return
        self.serving = None
        if self.closing:
            assert self.transport is not None
            self.transport.close()
        elif self.handing_over:
            self._hand_over_when_idle()
        else:
            self._idle_from_now()

    async def _serve(self, taken: _Taken) -> None:
        answer: bytes | None = None
        try:
            if self.write_paused is not None:
                await self.write_paused
            answer = await self._answer(taken)
        except asyncio.CancelledError:
            pass  # cut off (connections.py), or the loop is closing: nothing more is answered
        finally:
            self.serving = None
        if answer is not None and self.transport is not None and not self.transport.is_closing():
            self.transport.write(answer)
            self._serve_next()

    async def _answer(self, taken: _Taken) -> bytes:
        transport = self.transport
        assert transport is not None
        rel_url = URL.build(path=taken.raw_path, query_string=taken.raw_query, encoded=True)
        request = FrontRequest(taken.method, rel_url, taken.headers, UrlMappingMatchInfo({}, taken.route), transport,
                               taken.body)
        self.connection.request_started(self.serving, lambda: True)
        try:
            response = await taken.handler(request)  # type: ignore[arg-type]  (FrontRequest: see its doc)
        finally:
            self.connection.request_ended()
        return _wire(response)

    # ---- handing over to aiohttp ---------------------------------------------------------------------

    def _hand_over_when_idle(self) -> None:
        if self.serving is not None or self.transport is None or self.transport.is_closing():
            return
        if self.closing:
            self.transport.close()
            return
        aiohttp_protocol = self.make_aiohttp()
        self.connection.inner = aiohttp_protocol
        aiohttp_protocol.connection_made(self.transport)
        if self.write_paused is not None:
            aiohttp_protocol.pause_writing()
        self.transport.resume_reading()
        if self.unparsed:
            aiohttp_protocol.data_received(bytes(self.unparsed))
        self.unparsed.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def _bound_reading(self) -> None:
        """Read no further while MAX_WAITING requests wait, or while more than a whole request
        waits for aiohttp (the connection may only be handed over once the front has answered)."""
        limit = self.routes.config.max_body_bytes + MAX_HEAD_BYTES
        pause = len(self.waiting) >= MAX_WAITING or len(self.unparsed) > limit
        if pause is self.reading_paused or self.transport is None or self.transport.is_closing():
            return
        self.reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # ---- idle connections and shutdown ---------------------------------------------------------------

    def _idle_from_now(self) -> None:
        if self.transport is not None and not self.unparsed:
            self.idle.set(self.connection.gate.limits.idle_timeout_s, self.transport.close)
        else:
            self.idle.clear()

    def close_when_answered(self) -> asyncio.Future:
        """Shutdown: close now if no request was taken, else after its answer; done when closed
        (or handed to aiohttp, whose own shutdown closes it)."""
        self.closing = True
        if self.serving is None and self.transport is not None:
            self.transport.close()
        return self.closed


def _wire(response: web.StreamResponse) -> bytes:
    """The whole HTTP/1.1 answer for a handler's response (the key routes answer JSON in one body)."""
    assert isinstance(response, web.Response) and isinstance(response.body, bytes), response
    body = response.body
    head = _head(response.status, response.reason, tuple(response.headers.items()))
    return b"%sContent-Length: %d\r\nDate: %s\r\n\r\n%s" % (head, len(body), _http_date(), body)


@functools.lru_cache(maxsize=64)
def _head(status: int, reason: str, headers: tuple[tuple[str, str], ...]) -> bytes:
    """The status line and the handler's headers: the same few sets, over and over (a header that
    changes with each request, such as a trace id, only costs a miss)."""
    lines = [f"HTTP/1.1 {status} {reason}\r\n", *(f"{name}: {value}\r\n" for name, value in headers)]
    return "".join(lines).encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=2)
def _date_of(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode("ascii")


def _http_date() -> bytes:
    return _date_of(int(time.time()))
