"""Link latency on a virtual clock: messages reach their link a seeded while after they are sent.

MemoryTransport hands a message over on the next loop turn, and its own delay rule (LinkQueue)
reads the real clock, which a virtual loop never moves; so in a simulation the delay comes from
this wrapper instead. Each send to a peer leaves after a latency drawn from the run's RNG, and
never before an earlier send to the same peer: per-link order is kept, as over TCP, while links
to different peers overtake each other. What the fault layer does to a message (partitions,
loss) is decided when it reaches the link, so a cut made meanwhile loses it in flight. A closed
transport drops what it still holds: a dead process sends nothing more.
"""

from __future__ import annotations

import asyncio
import itertools
import random

from raftkv.core import Message
from raftkv.transport import Transport, TransportWrapper

__all__ = ["LatencyTransport"]

# Two sends to one peer never share a deadline: timers that tie may fire in either order.
_LINK_ORDER_S = 1e-9


class LatencyTransport(TransportWrapper):
    def __init__(self, inner: Transport, rng: random.Random, min_s: float, max_s: float) -> None:
        assert 0 <= min_s <= max_s
        super().__init__(inner)
        self._rng = rng
        self._min_s, self._max_s = min_s, max_s
        self._last_due: dict[str, float] = {}
        self._in_flight: dict[int, asyncio.TimerHandle] = {}
        self._tokens = itertools.count()

    def send(self, messages: list[Message]) -> None:
        if self._max_s == 0:
            self.inner.send(messages)
            return
        loop = asyncio.get_running_loop()
        by_peer: dict[str, list[Message]] = {}
        for m in messages:
            by_peer.setdefault(m.dst, []).append(m)
        for peer, batch in by_peer.items():
            due = max(loop.time() + self._rng.uniform(self._min_s, self._max_s),
                      self._last_due.get(peer, 0.0) + _LINK_ORDER_S)
            self._last_due[peer] = due
            token = next(self._tokens)
            self._in_flight[token] = loop.call_at(due, self._arrive, token, batch)

    def _arrive(self, token: int, batch: list[Message]) -> None:
        del self._in_flight[token]
        self.inner.send(batch)

    async def close(self) -> None:
        for handle in self._in_flight.values():
            handle.cancel()
        self._in_flight.clear()
        await self.inner.close()
