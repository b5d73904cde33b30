"""Fault injection for one node's links to its peers: partitions, one-way cuts, loss and delay.

Theory of operation
-------------------
A ``LinkFaults`` belongs to one node and says, from that node's point of view, what the network
is doing to each of its links. Both transports (TCP and in-memory) consult it for every message
at the two places a real network could lose it:

* when a message leaves: ``should_drop_outbound(peer)`` (partition, outbound cut, random loss)
  and ``delay_seconds(peer)`` (the transport holds the message that long, keeping link order);
  and again just before the bytes are written, with ``is_blocked_outbound(peer)``, so a cut made
  while messages sit in a send queue or a delay line also stops those (a cut wire loses what is
  in flight);
* when a message arrives: ``should_drop_inbound(peer)`` (partition, inbound cut).

Because this sits beneath the Raft driver, a simulated partition is indistinguishable from a cut
wire to everything above it: the core just hears nothing. Partitioning peer X here drops traffic
in both directions even if X's own rules are untouched, which is what `POST /simulate-partition`
on a single node needs.

Rules and their scope
---------------------
* ``isolated``: partitioned from every peer, including peers added later.
* ``partitioned``: named peers; both directions.
* ``cut_outbound`` / ``cut_inbound``: one direction only.
* ``loss_percent`` and ``delay_ms`` (per peer, or ``"*"`` for every peer): outbound only, so a
  message is subject to one loss draw, not two. Set them on both ends for a symmetric lossy link.

Determinism: the only randomness is ``rng``, drawn exactly once per outbound message to a peer
whose loss is above zero. With a seeded ``random.Random`` the same sequence of sends makes the
same decisions, which the simulation and the tests rely on.

Drops are counted per peer and direction and reported to ``on_drop(message, direction)`` (the
dashboard shows them bursting). The callback may be set or replaced at any time; an exception in
it is logged and swallowed so an observer cannot break the network path.

``LinkQueue`` is the outbound queue of one link, shared by both transports so that delay, cuts of
messages in flight and overflow behave identically in the TCP transport and its in-memory twin.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Literal

from raftkv.core.messages import Message

__all__ = ["ALL_PEERS", "Direction", "LinkFaults", "LinkQueue"]

logger = logging.getLogger("raftkv.transport")

Direction = Literal["outbound", "inbound"]
ALL_PEERS = "*"  # key for loss/delay rules that apply to every peer


class LinkFaults:
    """Per-peer fault rules for one node, changed at run time by the node's owner."""

    def __init__(
        self,
        rng: random.Random | None = None,
        on_drop: Callable[[Message, Direction], None] | None = None,
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.on_drop = on_drop
        self.isolated = False
        self.partitioned: set[str] = set()
        self.cut_out: set[str] = set()
        self.cut_in: set[str] = set()
        self.loss_percent: dict[str, float] = {}
        self.delay_ms: dict[str, float] = {}
        self.dropped: dict[str, dict[str, int]] = {}

    # ---- changing the rules -------------------------------------------------------------------

    def set_partitioned(self, partitioned: bool, peers: Iterable[str] | None = None) -> None:
        """Mirror of `POST /simulate-partition {"partitioned": bool, "peers": [...]?}`.

        Without peers: cut from (or reconnect to) everyone, clearing one-way cuts too. With peers:
        add them to (or remove them from) the named partitions and cuts; isolation is unchanged.
        """
        if peers is None:
            if partitioned:
                self.isolated = True
            else:
                self.heal()
            return
        names = set(peers)
        if partitioned:
            self.partitioned |= names
        else:
            self.heal(names)

    def partition(self, peers: Iterable[str]) -> None:
        self.partitioned |= set(peers)

    def isolate(self) -> None:
        self.isolated = True

    def heal(self, peers: Iterable[str] | None = None) -> None:
        """Undo partitions and cuts (all of them, isolation included, when peers is None)."""
        if peers is None:
            self.isolated = False
            self.partitioned.clear()
            self.cut_out.clear()
            self.cut_in.clear()
            return
        names = set(peers)
        self.partitioned -= names
        self.cut_out -= names
        self.cut_in -= names

    def cut_outbound(self, peer: str) -> None:
        self.cut_out.add(peer)

    def cut_inbound(self, peer: str) -> None:
        self.cut_in.add(peer)

    def set_loss(self, percent: float, peer: str = ALL_PEERS) -> None:
        if not 0.0 <= percent <= 100.0:
            raise ValueError(f"loss percent must be within 0..100, got {percent}")
        if percent == 0.0:
            self.loss_percent.pop(peer, None)
        else:
            self.loss_percent[peer] = float(percent)

    def set_delay(self, ms: float, peer: str = ALL_PEERS) -> None:
        if ms < 0:
            raise ValueError(f"delay must be >= 0 ms, got {ms}")
        if ms == 0:
            self.delay_ms.pop(peer, None)
        else:
            self.delay_ms[peer] = float(ms)

    def clear(self) -> None:
        """Back to a perfect network (drop counters are kept: they are history)."""
        self.heal()
        self.loss_percent.clear()
        self.delay_ms.clear()

    # ---- questions the transports ask ---------------------------------------------------------

    def is_blocked_outbound(self, peer: str) -> bool:
        """Whether the wire to `peer` is cut (no randomness; safe to ask more than once)."""
        return self.isolated or peer in self.partitioned or peer in self.cut_out

    def should_drop_outbound(self, peer: str) -> bool:
        """Decide the fate of one message to `peer`; draws from rng when loss applies."""
        if self.isolated or peer in self.partitioned or peer in self.cut_out:
            return True
        if self.loss_percent:
            loss = self.loss_percent.get(peer, self.loss_percent.get(ALL_PEERS, 0.0))
            if loss > 0.0:
                return self.rng.random() * 100.0 < loss
        return False

    def should_drop_inbound(self, peer: str) -> bool:
        return self.isolated or peer in self.partitioned or peer in self.cut_in

    def delay_seconds(self, peer: str) -> float:
        if not self.delay_ms:
            return 0.0
        return self.delay_ms.get(peer, self.delay_ms.get(ALL_PEERS, 0.0)) / 1000.0

    def record_drop(self, message: Message, direction: Direction) -> None:
        """Count a message the transport dropped because of these rules, and tell the observer."""
        peer = message.dst if direction == "outbound" else message.src
        counts = self.dropped.get(peer)
        if counts is None:
            counts = self.dropped[peer] = {"outbound": 0, "inbound": 0}
        counts[direction] += 1
        logger.debug("fault drop direction=%s peer=%s type=%s", direction, peer, type(message).__name__)
        if self.on_drop is not None:
            try:
                self.on_drop(message, direction)
            except Exception:
                logger.exception("on_drop callback failed; ignoring")

    # ---- reporting ----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """JSON-able description for /raft-state and the dashboard."""
        return {
            "isolated": self.isolated,
            "partitioned": sorted(self.partitioned),
            "cut_outbound": sorted(self.cut_out),
            "cut_inbound": sorted(self.cut_in),
            "loss_percent": dict(sorted(self.loss_percent.items())),
            "delay_ms": dict(sorted(self.delay_ms.items())),
            "dropped": {peer: dict(c) for peer, c in sorted(self.dropped.items())},
        }

    def __repr__(self) -> str:
        d = self.describe()
        del d["dropped"]
        return f"LinkFaults({d})"


class LinkQueue:
    """One outbound link's send queue: fault rules on entry, bounded, a delay line that keeps order.

    ``offer`` applies the outbound rules, then the bound: a full queue drops the *newest* message
    (tcp.py says why). Each message is stamped with its due time; ``pop_due`` releases the head only
    once it is due, so a delayed message holds back everything behind it (link order), and re-checks
    the cut at departure, so a cut made while messages wait loses them like bytes in flight.
    """

    def __init__(
        self, peer: str, faults: LinkFaults, max_messages: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        assert max_messages > 0
        self.peer, self.faults, self.max_messages, self.clock = peer, faults, max_messages, clock
        self._q: deque[tuple[float, Message]] = deque()  # (due time or 0.0 for "now", message)
        self.dropped_full = 0

    def __len__(self) -> int:
        return len(self._q)

    def offer(self, message: Message) -> bool:
        """Queue a message for this link; False if a fault rule or the bound dropped it."""
        faults = self.faults
        if faults.should_drop_outbound(self.peer):
            faults.record_drop(message, "outbound")
            return False
        if len(self._q) >= self.max_messages:
            self.dropped_full += 1
            n = self.dropped_full
            if n & (n - 1) == 0:  # warn at 1, 2, 4, 8...: visible but never a flood
                logger.warning("send queue full, dropping newest peer=%s dropped=%d", self.peer, n)
            return False
        delay = faults.delay_seconds(self.peer)
        self._q.append((self.clock() + delay if delay > 0 else 0.0, message))
        return True

    def pop_due(self) -> Message | None:
        """The next message ready to leave; None if empty or the head is still delayed."""
        q = self._q
        while q:
            due, m = q[0]
            if due and due > self.clock():
                return None
            q.popleft()
            if not self.faults.is_blocked_outbound(self.peer):
                return m
            self.faults.record_drop(m, "outbound")  # cut while it waited: lost in flight
        return None

    def seconds_until_due(self) -> float | None:
        """How long until the head may leave (0.0 if now); None if the queue is empty."""
        if not self._q:
            return None
        due = self._q[0][0]
        return max(0.0, due - self.clock()) if due else 0.0

    def clear(self) -> None:
        self._q.clear()
