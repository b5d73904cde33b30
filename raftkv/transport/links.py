"""What both transports keep per peer: the link table, the send path and inbound delivery.

Theory of operation
-------------------
A transport owns one ``Link`` per peer it sends to: the peer's ``LinkQueue`` (faults.py: outbound
fault rules, the bound, a delay line that keeps order) and whatever moves the queued messages,
which is where TCP and its in-memory twin really differ (a writer task owning a connection; a
drain scheduled on the event loop). ``PeerLinks`` is the rest, written once as the base class of
both, so the twin cannot drift from the real thing:

* ``send()`` looks up each message's link, counts a message to an unknown peer, offers it to the
  link's queue and, if the queue kept it, wakes the link (``Link.wake``: the one step on this
  path each transport does its own way);
* ``_deliver()`` is where every received message enters: per-peer received counters, the
  misaddressed check, the inbound fault rules (a drop is recorded), then ``on_message`` behind an
  exception guard, so a failing handler cannot break the link that carried the message;
* ``remove_peer``, ``reachable`` and ``stats`` read and change the table the same way in both;
  a transport says how one of its links stops (``_stop_link``), what a link reports beyond the
  shared row (``Link.own_stats``) and its top-level fields (``_describe``).

Both message paths run thousands of times a second, so they stay flat: per message one dict
lookup, the queue's ``offer`` and one ``wake`` call out, as a transport in one piece would do.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from raftkv.core.messages import Message
from raftkv.transport.faults import LinkFaults, LinkQueue
from raftkv.transport.hold import MessageHold

__all__ = ["Link", "PeerLinks"]

logger = logging.getLogger("raftkv.transport")


class Link(ABC):
    """Outbound state for one peer: its queue, what was sent, and how the transport moves it."""

    last_error: str | None = None  # why the connection last failed, where there is one

    def __init__(self, queue: LinkQueue) -> None:
        self.peer_id, self.queue = queue.peer, queue
        self.frames_sent = self.bytes_sent = 0

    @abstractmethod
    def wake(self) -> None:
        """The queue has a new message: make sure something will carry it."""

    @property
    @abstractmethod
    def connected(self) -> bool:
        """Whether what is sent now can reach the peer (see Transport.reachable)."""

    @property
    @abstractmethod
    def address(self) -> str: ...

    @property
    def reconnects(self) -> int:
        return 0

    def own_stats(self) -> dict[str, Any]:
        """Counters only this kind of link has, added to its stats row."""
        return {}

    def stats(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "connected": self.connected,
            "frames_sent": self.frames_sent,
            "bytes_sent": self.bytes_sent,
            "send_queue": len(self.queue),
            "reconnects": self.reconnects,
            "dropped_queue_full": self.queue.dropped_full,
            "last_error": self.last_error,
            **self.own_stats(),
        }


LinkT = TypeVar("LinkT", bound=Link)


class PeerLinks(ABC, Generic[LinkT]):
    """The peer table and message paths a transport shares with its twin (see module docstring)."""

    def __init__(self, node_id: str, faults: LinkFaults, max_queue_messages: int) -> None:
        self.node_id, self.faults, self.max_queue_messages = node_id, faults, max_queue_messages
        self._links: dict[str, LinkT] = {}
        self._received: dict[str, list[int]] = {}  # peer -> [frames, bytes]
        self._on_message: Callable[[Message], None] | None = None
        self.unknown_destination = 0
        self.hold = MessageHold(self._send_now, lambda m: faults.record_drop(m, "outbound"))

    # ---- the table ----------------------------------------------------------------------------

    def _new_queue(self, peer_id: str) -> LinkQueue:
        return LinkQueue(peer_id, self.faults, self.max_queue_messages)

    @abstractmethod
    def _stop_link(self, link: LinkT) -> None:
        """Stop moving the link's messages and drop what it still queues."""

    def remove_peer(self, peer_id: str) -> None:
        if (link := self._links.pop(peer_id, None)) is not None:
            self._stop_link(link)

    def reachable(self, peer_id: str) -> bool:
        link = self._links.get(peer_id)
        return link is not None and link.connected

    # ---- the message paths --------------------------------------------------------------------

    def send(self, messages: list[Message]) -> None:
        """Queue messages for their peers; returns at once (never awaits the network). In the
        lab's hold-and-step mode they wait in `hold` until released (hold.py)."""
        if self.hold.active:
            self.hold.keep(messages)
            return
        self._send_now(messages)

    def _send_now(self, messages: list[Message]) -> None:
        links = self._links
        woken: dict[str, LinkT] = {}  # once per link, after all its messages are queued
        for m in messages:
            link = links.get(m.dst)
            if link is None:
                self.unknown_destination += 1
                logger.debug("no such peer dst=%s type=%s", m.dst, type(m).__name__)
            elif link.queue.offer(m):
                woken[m.dst] = link
        for link in woken.values():
            link.wake()

    def _deliver(self, peer: str, m: Message, nbytes: int) -> None:
        """One message received from `peer` (`nbytes` on the wire, 0 if it never was)."""
        counts = self._received.get(peer)
        if counts is None:
            counts = self._received[peer] = [0, 0]
        counts[0] += 1
        counts[1] += nbytes
        if m.dst != self.node_id:
            logger.debug("misaddressed message dropped src=%s dst=%s", m.src, m.dst)
        elif self.faults.should_drop_inbound(peer):
            self.faults.record_drop(m, "inbound")
        elif self._on_message is not None:
            try:
                self._on_message(m)
            except Exception:
                logger.exception("on_message failed for %s from %s", type(m).__name__, peer)

    # ---- reporting ----------------------------------------------------------------------------

    @abstractmethod
    def _describe(self) -> dict[str, Any]:
        """The transport's own top-level stats fields (where it listens, TLS, ...)."""

    def _unlinked_address(self, peer_id: str) -> str | None:
        """The address shown for a peer we only hear from (no link to it)."""
        return None

    def stats(self) -> dict[str, Any]:
        """Per-peer counters and state, JSON-able, for /raft-state, /metrics and the dashboard."""
        peers: dict[str, dict[str, Any]] = {pid: link.stats() for pid, link in self._links.items()}
        for pid in self._received:
            if pid not in peers:  # a peer we only hear from
                peers[pid] = {"address": self._unlinked_address(pid), "connected": False}
        for pid, row in peers.items():
            row["frames_received"], row["bytes_received"] = self._received.get(pid, (0, 0))
        return {
            "node_id": self.node_id,
            **self._describe(),
            "unknown_destination": self.unknown_destination,
            "peers": peers,
            "faults": self.faults.describe(),
        }
