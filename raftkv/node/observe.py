"""The node's event hub: what the dashboard and `/watch` subscribers see.

Events come from the core's trace listener (role changes, votes, commits, ...), from the driver
(messages sent, grouped per destination and type for each Ready; messages the fault layer
dropped; periodic status) and are fanned out to subscribers through bounded queues: a slow
subscriber loses its oldest events instead of slowing the node. A ring of recent events lets a
new subscriber (or `GET /events`) see what just happened.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

from raftkv.kv import KVStateMachine

SUBSCRIBER_QUEUE_EVENTS = 2048


def kv_preview(kv: KVStateMachine, limit: int = 50) -> dict[str, Any]:
    """The part of the state machine a status event shows: its first keys and how many there are."""
    items, more = kv.range("", limit)
    return {"items": {k: v.value for k, v in items}, "more": more, "count": len(kv)}


class EventHub:
    def __init__(self, node_id: str, history_events: int = 1000) -> None:
        self.node_id = node_id
        self.recent: deque[dict[str, Any]] = deque(maxlen=history_events)
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self.dropped_for_slow_subscribers = 0

    @property
    def watched(self) -> bool:
        return bool(self._subscribers)

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("node", self.node_id)
        event.setdefault("t", time.time())
        if event.get("type") != "status":
            self.recent.append(event)
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
                self.dropped_for_slow_subscribers += 1
            q.put_nowait(event)

    async def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SUBSCRIBER_QUEUE_EVENTS)
        self._subscribers.add(q)
        try:
            for event in list(self.recent):
                yield event
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)
