"""In-process twin of the TCP transport, for tests and an embedded (single-process) cluster.

Theory of operation
-------------------
A ``MemoryNetwork`` is a registry of ``MemoryTransport``s by node id. The peer table, ``send()``
and inbound delivery are the very code the TCP transport runs (links.py: ``PeerLinks``), down to
each link's ``LinkQueue`` (outbound fault rules, bounded with the newest dropped, a delay line
that keeps order, cuts that lose what is in flight). This twin's own part is how a queued message
moves: waking a link schedules a drain of it with ``loop.call_soon`` (``call_later`` when the
head is delayed); the drain hands each due message to the destination's delivery, which applies
its inbound fault rules before calling ``on_message``. So the twin behaves as TCP does: per-link
order, both-sided partitions, one-way cuts, loss from the same seeded RNG draws, delay that keeps
order; and delivery is always asynchronous, never re-entrant from inside ``send()``.

Differences from TCP, on purpose: there are no connections (``connected`` means the destination
is registered and started), a message to a stopped or absent node is lost (like bytes written to
a dead socket), and snapshots are delivered whole. ``serialize=True`` passes every message through
the wire codec so a test also proves that what it sends can cross a real network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any

from raftkv.core.messages import Message
from raftkv.transport.codec import CodecError, decode, encode
from raftkv.transport.faults import LinkFaults, LinkQueue
from raftkv.transport.links import Link, PeerLinks

__all__ = ["MemoryNetwork", "MemoryTransport"]

logger = logging.getLogger("raftkv.transport")


class MemoryNetwork:
    """The shared medium: node id -> the transport currently registered under it."""

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryTransport] = {}

    def transport(self, node_id: str, peers: Iterable[str], faults: LinkFaults, **kw: Any) -> MemoryTransport:
        return MemoryTransport(self, node_id, peers, faults, **kw)


class _MemLink(Link):
    """A link with no connection: waking it schedules a drain of its queue on the event loop."""

    def __init__(self, queue: LinkQueue, owner: MemoryTransport) -> None:
        super().__init__(queue)
        self.owner = owner
        self.handle: asyncio.Handle | None = None  # the drain scheduled on the loop, if any
        self.lost = 0  # messages that found their destination stopped or absent

    def wake(self) -> None:
        if self.handle is None and self.owner._loop is not None:
            self.owner._schedule(self, 0.0)

    @property
    def connected(self) -> bool:
        """Whether the peer's transport is running (TcpTransport: whether its connection is up)."""
        target = self.owner.network.nodes.get(self.peer_id)
        return target is not None and target.running

    @property
    def address(self) -> str:
        return f"memory:{self.peer_id}"

    def own_stats(self) -> dict[str, Any]:
        return {"lost": self.lost}


class MemoryTransport(PeerLinks[_MemLink]):
    """Same public interface as TcpTransport: start, send, add_peer, remove_peer, close, stats."""

    def __init__(
        self,
        network: MemoryNetwork,
        node_id: str,
        peers: Iterable[str],
        faults: LinkFaults,
        *,
        max_queue_messages: int = 4096,
        serialize: bool = False,
    ) -> None:
        super().__init__(node_id, faults, max_queue_messages)
        self.network = network
        self.serialize = serialize
        self._loop: asyncio.AbstractEventLoop | None = None
        for pid in peers:
            self.add_peer(pid)

    @property
    def running(self) -> bool:
        return self._on_message is not None

    async def start(self, on_message: Callable[[Message], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_message = on_message
        self.network.nodes[self.node_id] = self  # a restarted node takes over its id
        for link in self._links.values():
            if link.queue:
                self._schedule(link, 0.0)

    async def close(self) -> None:
        self._on_message = None
        if self.network.nodes.get(self.node_id) is self:
            del self.network.nodes[self.node_id]
        for link in self._links.values():
            self._stop_link(link)

    def add_peer(self, peer_id: str, addr: Any = None) -> None:
        """`addr` is accepted for interface parity with TcpTransport and ignored."""
        if peer_id != self.node_id and peer_id not in self._links:
            self._links[peer_id] = _MemLink(self._new_queue(peer_id), self)

    def _stop_link(self, link: _MemLink) -> None:
        if link.handle is not None:
            link.handle.cancel()
            link.handle = None
        link.queue.clear()

    # ---- carrying messages (send() and delivery: links.py) ------------------------------------

    def _schedule(self, link: _MemLink, delay_s: float) -> None:
        assert self._loop is not None
        if delay_s > 0:
            link.handle = self._loop.call_later(delay_s, self._drain, link)
        else:
            link.handle = self._loop.call_soon(self._drain, link)

    def _drain(self, link: _MemLink) -> None:
        assert self._loop is not None
        link.handle = None
        if not self.running:
            return
        while (m := link.queue.pop_due()) is not None:
            target = self.network.nodes.get(link.peer_id)
            if target is None or not target.running:
                link.lost += 1
                continue
            nbytes = 0
            if self.serialize:
                try:
                    wire = encode(m)
                    m = decode(wire)
                except CodecError:  # a bug in the sender; drop that message, keep the link
                    logger.exception("cannot carry %s to peer=%s; dropped", type(m).__name__, link.peer_id)
                    continue
                nbytes = len(wire)
                link.bytes_sent += nbytes
            link.frames_sent += 1
            target._deliver(self.node_id, m, nbytes)
        wait_s = link.queue.seconds_until_due()
        if wait_s is not None:  # the head is delayed
            self._schedule(link, wait_s)

    def _describe(self) -> dict[str, Any]:
        return {"listen": f"memory:{self.node_id}", "tls": False}

    def _unlinked_address(self, peer_id: str) -> str:
        return f"memory:{peer_id}"
