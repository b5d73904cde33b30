"""Hold-and-step delivery: a lab mode in which a node's outgoing Raft messages wait to be let go.

While holding, every message the node sends waits here instead of leaving, numbered in the order
it was sent; a person (through the dashboard) releases them one at a time, in any order, or drops
them, and so watches an election or a log repair step by step on real nodes. Released messages
take the ordinary path from then on (the fault rules, the link queue, the network). Leaving the
mode releases everything still held, in order, and the cluster carries on.

Bounded: past `MAX_HELD_MESSAGES` the newest message is dropped (and counted), as a full link
queue does, so a person who walks away cannot make a node hold without limit.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from raftkv.core.messages import Message

__all__ = ["MAX_HELD_MESSAGES", "HeldMessage", "MessageHold"]

MAX_HELD_MESSAGES = 10_000


@dataclass(frozen=True, slots=True)
class HeldMessage:
    number: int
    message: Message
    held_at: float  # wall time, for the page

    def describe(self) -> dict[str, Any]:
        m = self.message
        entries = len(getattr(m, "entries", ()))
        return {"number": self.number, "type": type(m).__name__, "src": m.src, "dst": m.dst, "term": m.term,
                "entries": entries, "preVote": getattr(m, "pre_vote", False), "heldAt": round(self.held_at, 3)}


class MessageHold:
    def __init__(self, release: Callable[[list[Message]], None], drop: Callable[[Message], None]) -> None:
        self._release = release  # sends messages on, past the hold
        self._drop = drop  # records a message dropped on purpose
        self.active = False
        self._held: dict[int, HeldMessage] = {}
        self._numbers = itertools.count(1)
        self.dropped_full = 0

    def keep(self, messages: Iterable[Message]) -> None:
        for m in messages:
            if len(self._held) >= MAX_HELD_MESSAGES:
                self.dropped_full += 1
                self._drop(m)
                continue
            number = next(self._numbers)
            self._held[number] = HeldMessage(number, m, time.time())

    def held(self) -> list[dict[str, Any]]:
        return [h.describe() for h in self._held.values()]

    def release(self, numbers: Iterable[int]) -> int:
        """Send these held messages on, in the order given; returns how many were still held."""
        chosen = [self._held.pop(n) for n in numbers if n in self._held]
        self._release([h.message for h in chosen])
        return len(chosen)

    def drop(self, numbers: Iterable[int]) -> int:
        chosen = [self._held.pop(n) for n in numbers if n in self._held]
        for h in chosen:
            self._drop(h.message)
        return len(chosen)

    def set_active(self, active: bool) -> int:
        """Enter or leave the mode; leaving releases everything held, oldest first."""
        self.active = active
        return 0 if active else self.release(list(self._held))
