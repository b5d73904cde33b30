"""The node's Raft event stream: what the dashboard and `GET /raft/events` subscribers see.

Events come from the group's observer (role changes, votes, commits, messages sent grouped per
destination and type for each Ready, messages the fault layer dropped) and from the host (periodic
status, fault changes), and are fanned out to subscribers through bounded queues: a slow subscriber
loses its oldest events instead of slowing the node. A ring of recent events lets a new subscriber
see what just happened.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

SUBSCRIBER_QUEUE_EVENTS = 2048


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
