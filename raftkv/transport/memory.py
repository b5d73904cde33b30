"""In-process twin of the TCP transport, for tests and an embedded (single-process) cluster.

Theory of operation
-------------------
A ``MemoryNetwork`` is a registry of ``MemoryTransport``s by node id. Each transport keeps, per
destination, the same ``LinkQueue`` the TCP writer uses (outbound fault rules, bounded with the
newest dropped, a delay line that keeps order, cuts that lose what is in flight). ``send()``
offers each message to its link's queue and schedules a drain of that link with
``loop.call_soon`` (``call_later`` when the head is delayed); the drain hands each due message to
the destination, which applies its inbound fault rules before calling ``on_message``. So the twin
behaves as TCP does: per-link order, both-sided partitions, one-way cuts, loss from the same seeded
RNG draws, delay that keeps order; and delivery is always asynchronous, never re-entrant from
inside ``send()``.

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

__all__ = ["MemoryNetwork", "MemoryTransport"]

logger = logging.getLogger("raftkv.transport")


class MemoryNetwork:
    """The shared medium: node id -> the transport currently registered under it."""

    def __init__(self) -> None:
        self.nodes: dict[str, MemoryTransport] = {}

    def transport(self, node_id: str, peers: Iterable[str], faults: LinkFaults, **kw: Any) -> MemoryTransport:
        return MemoryTransport(self, node_id, peers, faults, **kw)


class _MemLink:
    def __init__(self, queue: LinkQueue) -> None:
        self.peer_id, self.queue = queue.peer, queue
        self.handle: asyncio.Handle | None = None
        self.frames_sent = self.bytes_sent = self.lost = 0


class MemoryTransport:
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
        self.network = network
        self.node_id = node_id
        self.faults = faults
        self.max_queue_messages = max_queue_messages
        self.serialize = serialize
        self._links: dict[str, _MemLink] = {}
        self._received: dict[str, list[int]] = {}
        self._on_message: Callable[[Message], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.unknown_destination = 0
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
            self._cancel(link)

    def add_peer(self, peer_id: str, addr: Any = None) -> None:
        """`addr` is accepted for interface parity with TcpTransport and ignored."""
        if peer_id != self.node_id and peer_id not in self._links:
            self._links[peer_id] = _MemLink(LinkQueue(peer_id, self.faults, self.max_queue_messages))

    def remove_peer(self, peer_id: str) -> None:
        link = self._links.pop(peer_id, None)
        if link is not None:
            self._cancel(link)

    def _cancel(self, link: _MemLink) -> None:
        if link.handle is not None:
            link.handle.cancel()
            link.handle = None
        link.queue.clear()

    # ---- sending ------------------------------------------------------------------------------

    def reachable(self, peer_id: str) -> bool:
        """Whether the peer's transport is running (TcpTransport: whether its connection is up)."""
        return peer_id in self._links and peer_id in self.network.nodes

    def send(self, messages: list[Message]) -> None:
        for m in messages:
            link = self._links.get(m.dst)
            if link is None:
                self.unknown_destination += 1
                logger.debug("no such peer dst=%s type=%s", m.dst, type(m).__name__)
            elif link.queue.offer(m) and link.handle is None and self._loop is not None:
                self._schedule(link, 0.0)

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

    # ---- receiving ----------------------------------------------------------------------------

    def _deliver(self, peer: str, m: Message, nbytes: int) -> None:
        counts = self._received.get(peer)
        if counts is None:
            counts = self._received[peer] = [0, 0]
        counts[0] += 1
        counts[1] += nbytes
        if self.faults.should_drop_inbound(peer):
            self.faults.record_drop(m, "inbound")
            return
        if self._on_message is not None:
            try:
                self._on_message(m)
            except Exception:
                logger.exception("on_message failed for %s from %s", type(m).__name__, peer)

    def stats(self) -> dict[str, Any]:
        peers: dict[str, dict[str, Any]] = {}
        for pid, link in self._links.items():
            target = self.network.nodes.get(pid)
            peers[pid] = {
                "address": f"memory:{pid}",
                "connected": target is not None and target.running,
                "frames_sent": link.frames_sent,
                "bytes_sent": link.bytes_sent,
                "send_queue": len(link.queue),
                "reconnects": 0,
                "dropped_queue_full": link.queue.dropped_full,
                "lost": link.lost,
                "last_error": None,
            }
        for pid, (frames, nbytes) in self._received.items():
            row = peers.setdefault(pid, {"address": f"memory:{pid}", "connected": False})
            row["frames_received"], row["bytes_received"] = frames, nbytes
        for row in peers.values():
            row.setdefault("frames_received", 0)
            row.setdefault("bytes_received", 0)
        return {
            "node_id": self.node_id,
            "listen": f"memory:{self.node_id}",
            "tls": False,
            "unknown_destination": self.unknown_destination,
            "peers": peers,
            "faults": self.faults.describe(),
        }
