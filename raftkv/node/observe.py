"""The node's event hub: what the dashboard and `/watch` subscribers see.

Events come from the core's trace listener (role changes, votes, commits, ...), from the driver
(messages sent, grouped per destination and type for each Ready; messages the fault layer
dropped; periodic status) and are fanned out to subscribers through bounded queues: a slow
subscriber loses its oldest events instead of slowing the node. A ring of recent events lets a
new subscriber (or `GET /events`) see what just happened.

Each status event (four a second) carries a preview of the state machine, bounded in bytes so that
one large value cannot make every status event, and everything that keeps them, large: at most
`MAX_PREVIEW_KEYS` keys and `MAX_PREVIEW_BYTES` of keys and values together; a value whose JSON
text is longer than `MAX_PREVIEW_VALUE_BYTES` is shown as the start of that text and its full size
(a reader fetches the whole value with `GET /kv/{key}` when a person asks for it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, NamedTuple
from weakref import finalize

from raftkv.kv import KeyValue, KVStateMachine

SUBSCRIBER_QUEUE_EVENTS = 2048
MAX_PREVIEW_KEYS = 50
MAX_PREVIEW_VALUE_BYTES = 256
MAX_PREVIEW_BYTES = 8 * 1024


class _ShownValue(NamedTuple):
    """How the preview shows one key's value; valid while the key's mod_revision is unchanged."""

    mod_revision: int
    preview_bytes: int  # what showing it adds to the preview, key included
    truncated: dict[str, Any] | None  # {"head", "bytes"} when the value is too long to show whole


# id(state machine) -> the values its last preview showed, forgotten with the state machine.
# Measuring a 1 MiB value means encoding it (~3.5 ms): this way that happens once per write of the
# key, not four times a second. (A state machine compares by value, so it cannot be a dict key.)
_shown_before: dict[int, dict[str, _ShownValue]] = {}


def kv_preview(kv: KVStateMachine) -> dict[str, Any]:
    """The part of the state machine a status event shows, bounded in bytes (see the module doc).

    {"items": {key: value} shown whole, "truncated": {key: {"head": the first bytes of its JSON
    text, "bytes": the size of all of it}}, "more": whether keys were left out, "count": keys}.
    """
    entries, more = kv.range("", MAX_PREVIEW_KEYS)
    if id(kv) not in _shown_before:
        finalize(kv, _shown_before.pop, id(kv), None)
    before = _shown_before.get(id(kv), {})
    shown: dict[str, _ShownValue] = {}
    items: dict[str, Any] = {}
    truncated: dict[str, dict[str, Any]] = {}
    budget_bytes = MAX_PREVIEW_BYTES
    for key, entry in entries:
        value = before.get(key)
        if value is None or value.mod_revision != entry.mod_revision:
            value = _shown_value(key, entry)
        shown[key] = value  # kept even if it does not fit, so it is not measured again next time
        if value.preview_bytes > budget_bytes:
            more = True
            break
        budget_bytes -= value.preview_bytes
        if value.truncated is None:
            items[key] = entry.value
        else:
            truncated[key] = value.truncated
    _shown_before[id(kv)] = shown
    return {"items": items, "truncated": truncated, "more": more, "count": len(kv)}


def _shown_value(key: str, entry: KeyValue) -> _ShownValue:
    text = _json_bytes(entry.value)
    key_bytes = len(_json_bytes(key)) + 2  # with its colon and the comma after the value
    if len(text) <= MAX_PREVIEW_VALUE_BYTES:
        return _ShownValue(entry.mod_revision, key_bytes + len(text), None)
    head = text[:MAX_PREVIEW_VALUE_BYTES].decode(errors="ignore")  # a character cut in two is left out
    truncated = {"head": head, "bytes": len(text)}
    return _ShownValue(entry.mod_revision, key_bytes + len(_json_bytes(truncated)), truncated)


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


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
