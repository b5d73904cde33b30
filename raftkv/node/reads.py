"""Where a linearizable read waits, and what releases it (ReadIndex, Raft thesis 6.4).

Theory of operation
-------------------
A read's future passes through three named places:

1. `queued` (`QueuedRead`): accepted, waiting for the next ReadIndex round. One round is in flight
   at a time (as etcd does): reads that arrive meanwhile share the next one, so under load a round
   serves many reads. An unanswered round stops holding back the next after the patience the
   group gives (a minimum election timeout). While no leader is reachable the reads stay here and
   `fail_queued` answers those held too long: nothing is unsure about a read never asked.
2. `rounds` (`ReadRound`, by context): the ReadIndex request the core is asking (as leader, a
   heartbeat round; as follower, the leader). Its `ReadState` gives the read index, or says the
   read could not be confirmed (`NotAppliedError`).
3. `at_index` (`ReadAtIndex`): confirmed at a read index; released once this replica has applied
   that far, which is what makes a follower's local read linearizable.
Deadlines give up with `OutcomeUnknownError`. The tracker does no I/O and reads no clock.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

from raftkv.core import ReadState

from .errors import NotAppliedError, OutcomeUnknownError, fail
from .gathering import Gathering

__all__ = ["QueuedRead", "ReadAtIndex", "ReadRound", "ReadTracker"]

Answer = asyncio.Future[None]


@dataclass(slots=True)
class QueuedRead:
    answer: Answer
    asked_at: float
    gathered: bool = False  # its source hands reads over one per loop iteration (gathering.py)


@dataclass(slots=True)
class ReadRound:
    reads: list[Answer]
    asked_at: float
    deadline: float


@dataclass(slots=True)
class ReadAtIndex:
    index: int
    reads: list[Answer]
    deadline: float


class ReadTracker:
    def __init__(self, node_id: str, timeout_s: float) -> None:
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.queued: list[QueuedRead] = []
        self.rounds: dict[bytes, ReadRound] = {}
        self.at_index: list[ReadAtIndex] = []
        self._contexts = itertools.count()
        self.gathering = Gathering()  # when the next round may start, if only gathered reads wait

    def submit(self, answer: Answer, now: float, gathered: bool = False) -> None:
        self.queued.append(QueuedRead(answer, now, gathered))

    def may_ask(self, now: float, patience_s: float) -> bool:
        """Whether a new round may start: none in flight, or the newest waited past patience."""
        if not self.rounds:
            return True
        return now - max(r.asked_at for r in self.rounds.values()) >= patience_s

    def start_round(self, now: float) -> bytes:
        """Move every queued read into a new round; its context, for the core's read_index()."""
        # Each of them arrived before this request, so its read index is safe for all of them.
        reads = [q.answer for q in self.queued if not q.answer.done()]
        self.gathering.started(now, self.queued)
        self.queued = []
        ctx = f"{self.node_id}:{next(self._contexts)}".encode()
        self.rounds[ctx] = ReadRound(reads, now, now + self.timeout_s)
        return ctx

    def confirmed(self, state: ReadState, now: float) -> float | None:
        """The core's answer for a round; how long the round took (None: not ours, or refused)."""
        round_ = self.rounds.pop(state.ctx, None)
        if round_ is None:
            return None
        if not state.ok:
            fail(round_.reads, NotAppliedError("no leader could confirm this read; retry"))
            return None
        self.at_index.append(ReadAtIndex(state.index, round_.reads, round_.deadline))
        return now - round_.asked_at

    def release(self, applied_index: int) -> None:
        """Answer the reads whose read index this replica has applied."""
        still = []
        for waiting in self.at_index:
            if waiting.index > applied_index:
                still.append(waiting)
                continue
            for answer in waiting.reads:
                if not answer.done():
                    answer.set_result(None)
        self.at_index = still

    def fail_queued(self, held_since: float, error: Exception) -> None:
        """Fail the queued reads asked at or before `held_since` (held for want of a leader)."""
        if any(q.asked_at <= held_since for q in self.queued):
            fail([q.answer for q in self.queued if q.asked_at <= held_since], error)
            self.queued = [q for q in self.queued if q.asked_at > held_since]

    def expire(self, now: float) -> None:
        for ctx in [c for c, r in self.rounds.items() if r.deadline <= now]:
            fail(self.rounds.pop(ctx).reads, OutcomeUnknownError("the read could not be confirmed in time; retry"))
        for waiting in self.at_index:
            if waiting.deadline <= now:
                fail(waiting.reads, OutcomeUnknownError("this node did not catch up in time; retry"))
        self.at_index = [w for w in self.at_index if w.deadline > now]

    def answers(self) -> list[Answer]:
        return ([q.answer for q in self.queued] + [a for r in self.rounds.values() for a in r.reads]
                + [a for w in self.at_index for a in w.reads])
