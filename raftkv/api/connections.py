"""Client connections within bounds: how many a node holds at once, and how long a slow client may
hold one.

Theory of operation
-------------------
aiohttp bounds what a request may carry (request line and header sizes; `client_max_size` for
bodies) and closes a connection left idle between requests (`keepalive_timeout`, which is the idle
timeout here, counted from the connection's start and from each answer). It has no cap on
connections, no deadline for a request that is still arriving, and none for an answer the client
does not read. Those are here: `BoundedRunner` wraps each of aiohttp's connections in a
`BoundedConnection` (an asyncio protocol that passes everything through), and `middleware` tells
the connection when a request reached the API and when it left it.

- **How many.** Past `max_connections` open connections, a new one is answered 503 (`Retry-After`)
  and closed before aiohttp sees it. The open ones are served as before.
- **A request arriving slowly.** From its first byte, a request's head (request line and headers)
  must arrive within `header_timeout_s`; from its head, its whole body within `body_timeout_s`.
  Else the client is answered 408 and the connection closed: a slowloris client that sends its
  headers a byte at a time, or a body that never ends, holds a connection that long and no longer.
- **An answer not read.** When a client stops reading, the kernel's socket buffers fill, then the
  transport's, and asyncio pauses the writer (`pause_writing`). If the client has not read enough
  to resume it within `send_timeout_s`, the connection is aborted and the handler still writing to
  it is cancelled. That bounds a client that never reads its answer, and a stalled watch
  (Server-Sent Events) or WebSocket consumer: its handler ends, its watcher is dropped
  (node/watch.py) and what was queued for it is freed. Until then it holds the transport's
  high-water mark and one write (api/coordination.py bounds a watch's write in bytes).

All of it is a few timers and counters per connection, on the event loop the Raft group shares;
nothing here waits, so no client can stall the loop, and a cut is counted by its reason in
`/metrics` (`raft_http_connections_cut_total`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from raftkv.node import NodeConfig

from .deadline import Deadline
from .front import FRONT, Front, FrontRoutes, front_routes

__all__ = ["BoundedConnection", "BoundedRunner", "ConnectionLimits", "ConnectionStats"]

log = logging.getLogger("raftkv.api")

CLOSE_GRACE_S = 1.0  # a closed connection's last answer gets this long to leave before the socket is aborted
REFUSE_LINGER_S = 0.25  # a refused connection's request is read (and dropped) this long, so the close is no reset


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    idle_timeout_s: float
    send_timeout_s: float

    def __post_init__(self) -> None:
        assert self.max_connections >= 1, self.max_connections
        assert min(self.header_timeout_s, self.body_timeout_s, self.idle_timeout_s, self.send_timeout_s) > 0, self

    @classmethod
    def of(cls, cfg: NodeConfig) -> ConnectionLimits:
        return cls(cfg.max_client_connections, cfg.client_header_timeout_s, cfg.client_body_timeout_s,
                   cfg.client_idle_timeout_s, cfg.client_send_timeout_s)


class ConnectionStats:
    """What the connections did, as a Prometheus collector (register it with a node's registry)."""

    CUT_REASONS = ("header_timeout", "body_timeout", "send_timeout")

    def __init__(self) -> None:
        self.open = 0
        self.refused = 0
        self.cut = dict.fromkeys(self.CUT_REASONS, 0)

    def collect(self) -> Iterator[Any]:
        yield GaugeMetricFamily("raft_http_connections", "Client connections open", value=self.open)
        yield CounterMetricFamily("raft_http_connections_refused", "Client connections refused (503): too many open",
                                  value=self.refused)
        cut = CounterMetricFamily("raft_http_connections_cut", "Client connections cut off for a timeout",
                                  labels=["reason"])
        for reason, count in self.cut.items():
            cut.add_metric([reason], count)
        yield cut


class _Gate:
    """What every connection of one server shares: the limits, the count, the way to the API (the
    front for the key routes, when the application has one, and aiohttp's protocol)."""

    def __init__(self, limits: ConnectionLimits, stats: ConnectionStats, node_id: str,
                 make_protocol: Callable[[], asyncio.Protocol], front: FrontRoutes | None) -> None:
        self.limits = limits
        self.stats = stats
        self.node_id = node_id
        self.make_protocol = make_protocol
        self.front = front
        self.by_transport: dict[asyncio.BaseTransport, BoundedConnection] = {}
        self.refusal = _answer(503, "Service Unavailable", {"Retry-After": "1"}, {
            "error": f"too many connections: {node_id} serves at most {limits.max_connections} clients at once; "
                     "retry later, or use another node", "reason": "too_many_connections",
            "limit": limits.max_connections, "node": node_id})

    def __call__(self) -> BoundedConnection:
        return BoundedConnection(self)


class BoundedConnection(asyncio.Protocol):
    """One client connection: the front (front.py) or aiohttp's protocol inside (`inner`), unless
    the connection was refused. The front puts aiohttp's in its place when it hands over."""

    def __init__(self, gate: _Gate) -> None:
        self.gate = gate
        self.inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.request_task: asyncio.Task | None = None  # the handler of the request in the API, if one is
        self.deadline = Deadline()  # for the head or the body arriving
        self.send_deadline: asyncio.TimerHandle | None = None  # while writing is paused
        self.cut: str | None = None

    # ---- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # (uvloop's are no subclass)
        gate = self.gate
        if gate.stats.open >= gate.limits.max_connections:
            gate.stats.refused += 1
            transport.write(gate.refusal)
            self.deadline.set(REFUSE_LINGER_S, transport.close)
            return
        gate.stats.open += 1
        gate.by_transport[transport] = self
        self.inner = gate.make_protocol() if gate.front is None else Front(gate.front, self, gate.make_protocol)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.inner is None:  # refused: its request was read, so closing now sends no reset
            assert self.transport is not None
            self.transport.close()
            return
        if self.request_task is None and not self.deadline.armed and self.cut is None:
            self.deadline.set(self.gate.limits.header_timeout_s, self._head_late)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.inner is None else self.inner.eof_received()

    def pause_writing(self) -> None:
        if self.inner is None:
            return
        self.send_deadline = asyncio.get_running_loop().call_later(self.gate.limits.send_timeout_s, self._send_late)
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.inner is None:
            return
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline.cancel()
        if self.send_deadline is not None:
            self.send_deadline.cancel()
            self.send_deadline = None
        if self.inner is None:
            return
        self.gate.stats.open -= 1
        if self.transport is not None:
            self.gate.by_transport.pop(self.transport, None)
        self.inner.connection_lost(exc)

    # ---- what the middleware and the front say -----------------------------------------------------

    def head_arrived(self) -> None:
        """The front read a request's head; its body is still arriving."""
        self.deadline.set(self.gate.limits.body_timeout_s, self._body_late)

    def request_started(self, task: asyncio.Task | None, body_arrived: Callable[[], bool]) -> None:
        """`task` answers a request that reached the API (cancelled if the connection is cut)."""
        self.request_task = task
        self.deadline.clear()
        if not body_arrived():  # a body is still arriving (aiohttp starts handlers on the head)
            self.deadline.set(self.gate.limits.body_timeout_s, lambda: None if body_arrived() else self._body_late())

    def request_ended(self) -> None:
        self.request_task = None
        self.deadline.clear()

    # ---- cutting off -------------------------------------------------------------------------------

    def _head_late(self) -> None:
        self._close_with_408("header_timeout", f"the request's head did not arrive within "
                                               f"{self.gate.limits.header_timeout_s:g} s")

    def _body_late(self) -> None:
        self._close_with_408("body_timeout", f"the request's body did not arrive within "
                                             f"{self.gate.limits.body_timeout_s:g} s of its head")

    def _send_late(self) -> None:
        """The client left the answer unread: nothing more can reach it, so abort at once."""
        self.send_deadline = None
        self._count_cut("send_timeout", f"the client read nothing for {self.gate.limits.send_timeout_s:g} s")
        assert self.transport is not None
        self.transport.abort()

    def _close_with_408(self, reason: str, why: str) -> None:
        self._count_cut(reason, why)
        transport = self.transport
        assert transport is not None
        transport.write(_answer(408, "Request Timeout", {}, {
            "error": f"request timeout: {why}", "reason": reason, "node": self.gate.node_id}))
        transport.close()  # after the 408 leaves; a client that does not read it either is aborted
        asyncio.get_running_loop().call_later(CLOSE_GRACE_S, transport.abort)

    def _count_cut(self, reason: str, why: str) -> None:
        self.cut = reason
        self.gate.stats.cut[reason] += 1
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        log.info("client connection from %s cut off: %s", peer, why, extra={"event": "api.connection_cut",
                                                                            "reason": reason})
        if self.request_task is not None:  # a handler waiting on a body, or writing what nobody reads
            self.request_task.cancel()


def _answer(status: int, reason: str, headers: dict[str, str], payload: dict[str, Any]) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, written straight to the transport."""
    body = json.dumps(payload).encode()
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json; charset=utf-8",
            f"Content-Length: {len(body)}", "Connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class BoundedRunner(web.AppRunner):
    """An AppRunner whose sites (web.TCPSite, with or without TLS) serve every connection through a
    BoundedConnection. aiohttp's own idle timeout (`keepalive_timeout`) is set from the limits."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, node_id: str, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self.limits, self.node_id = limits, node_id
        self.shutdown_timeout_s = kwargs.get("shutdown_timeout", 60.0)  # (aiohttp keeps its own private)
        self.stats = ConnectionStats()
        self._gate: _Gate | None = None
        app.middlewares.insert(0, self._middleware)  # outermost: it sees every request that reached the API

    @property
    def server(self) -> Any:
        """What a site serves: the protocol factory (aiohttp's, inside a gate)."""
        inner = super().server
        if inner is None:
            return None
        if self._gate is None or self._gate.make_protocol is not inner:
            self._gate = _Gate(self.limits, self.stats, self.node_id, inner, self._front_routes())
        return self._gate

    def _front_routes(self) -> FrontRoutes | None:
        """The application's key routes for the front, inside the application's middlewares as they
        are now that it runs (a test's own among them), but this runner's: the front does its job."""
        config = self.app.get(FRONT)
        if config is None:
            return None
        return front_routes(self.app, config, [m for m in self.app.middlewares if m != self._middleware])

    async def shutdown(self) -> None:
        """After the application's shutdown: connections still in the front are closed once what
        they took is answered (aiohttp's own shutdown then closes those it serves)."""
        await super().shutdown()
        if self._gate is not None:
            fronts = [connection.inner.close_when_answered() for connection in self._gate.by_transport.values()
                      if isinstance(connection.inner, Front)]
            if fronts:
                await asyncio.wait(fronts, timeout=self.shutdown_timeout_s)

    @web.middleware
    async def _middleware(self, request: web.Request,
                          handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        connection = self._gate.by_transport.get(request.transport) if self._gate and request.transport else None
        if connection is None:
            return await handler(request)
        connection.request_started(asyncio.current_task(), request.content.is_eof)
        try:
            return await handler(request)
        finally:
            connection.request_ended()
