"""How long the next round waits for requests that come one per event-loop iteration.

etcd's gRPC API hands a node each write and each read in a loop iteration of its own (grpc.aio
runs a call's handler in a task of its own), so a leader's append, or a node's ReadIndex round,
would carry one or two of them: a round costs far more than a call (bench/PROFILE.md, twenty-third
round). Such requests are `gathered`: after a round that carried more than one of them, the next
round waits until GATHER_S after it while only gathered requests wait. A lone client's request
never waits (the last round carried one), and a request of any other source (an HTTP request, a
follower's forward) starts the round at once and takes the waiting ones along.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

__all__ = ["GATHER_S", "Gatherable", "Gathering"]

GATHER_S = 0.003


class Gatherable(Protocol):
    @property
    def gathered(self) -> bool: ...


class Gathering:
    """One kind of round's last start, and how many gathered requests it carried."""

    __slots__ = ("_gathered_in_last", "_last_at")

    def __init__(self) -> None:
        self._last_at = 0.0
        self._gathered_in_last = 0

    def started(self, now: float, carried: Iterable[Gatherable]) -> None:
        self._last_at, self._gathered_in_last = now, sum(r.gathered for r in carried)

    def due(self, now: float, waiting: Iterable[Gatherable], gather_s: float) -> float | None:
        """When the next round may start, if not now."""
        due = self._last_at + gather_s
        if self._gathered_in_last > 1 and now < due and all(r.gathered for r in waiting):
            return due
        return None
