"""Where a client write waits, and what wakes it.

Theory of operation
-------------------
A write's future passes through at most three named places, and leaves through exactly one
answer: its state machine result, or an error that says whether it may have happened.

1. `queued` (`QueuedWrite`): accepted by this node, not yet proposed. The group takes a batch each
   loop turn: a leader proposes it, a follower forwards it to the leader it knows as one
   `ProposeForward`, keeping one forward in flight (`forward_in_flight`) so that writes arriving
   meanwhile go together in the next. While no leader is reachable the writes stay here, and
   `fail_queued` answers those held longer than the hold time with `NoLeaderError`: they were never
   sent, so nothing was done.
2. `forwarded` (`ForwardedBatch`, by ticket): sent to a leader, waiting for its `ProposeAnswer`.
   `place_forwarded` moves the batch to (3) at the indexes the leader gave. A batch unanswered for
   a while is sent again under its ticket (`resends`: the forward or its answer may have been
   lost), and the leader answers a ticket it has seen in its term with the answer it gave
   (`ForwardLedger`), never appending the batch twice. Its ledger knows its own term only, so a
   leader refuses a forward sent in any other term. A refusal is `NotAppliedError` for a batch
   sent once, and unknown (504) for one sent again: an earlier copy may be in the log, appended
   by a leader that has since moved to a new term or restarted with an empty ledger. If the
   leader changes first (`leader_changed`), its term changes, or the deadline passes (`expire`),
   the outcome is unknown: the leader may have appended them (504).
3. `placed` (`PlacedWrite`, by log index): its entry is in the log at that index and term. When
   the entry at that index is applied (`applied`), a matching term answers the state machine's
   result; another term means another leader's entry took the index, so the write was definitely
   not applied. A newer write placed at the same index proves the same (Leader Completeness: a
   leader that appends at an index holds no committed entry there). The deadline gives up (504).

The tracker does no I/O and reads no clock: times come in as arguments.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from raftkv.core import Entry

from .errors import NotAppliedError, OutcomeUnknownError, fail
from .metrics import NodeMetrics
from .peer_messages import ProposeAnswer, ProposeForward

__all__ = ["FORWARDED_TO", "ForwardLedger", "ForwardedBatch", "PlacedWrite", "ProposalTracker", "QueuedWrite"]

# The key a forwarded proposal's result carries: which leader took it (the API reports it).
FORWARDED_TO = "forwardedTo"
RECENT_RESULTS = 4096  # entries' results kept while a forward is unanswered (a few seconds of writes)

Answer = asyncio.Future[dict[str, Any]]


@dataclass(slots=True)
class QueuedWrite:
    data: bytes  # the encoded command
    answer: Answer
    proposed_at: float
    leader_term: int | None = None  # only this node may append it, as the leader of this term
    gathered: bool = False  # its source hands writes over one per loop iteration (RaftGroup.propose)


@dataclass(slots=True)
class ForwardedBatch:
    leader: str
    term: int  # the leader's term it was sent in: only that leadership knows its ticket
    writes: list[QueuedWrite]
    deadline: float
    sent_at: float
    sent_again: bool = False  # a copy may already be in the leader's log


@dataclass(slots=True)
class PlacedWrite:
    term: int  # the term of the entry that must be applied at its index
    answer: Answer
    proposed_at: float
    deadline: float
    forwarded_to: str | None  # the leader that placed it, for a forwarded write


@dataclass(slots=True)
class _ForwardInFlight:
    ticket: int
    leader: str
    sent_at: float


class ProposalTracker:
    def __init__(self, node_id: str, timeout_s: float, metrics: NodeMetrics, first_ticket: int = 1) -> None:
        """`first_ticket`: where this incarnation's tickets start. A leader refuses tickets below
        the oldest a follower still waited for (ForwardLedger), so a restarted node must start
        above its earlier run's: the group starts at the clock's nanoseconds, which run ahead of
        any run's count of forwards."""
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.metrics = metrics
        self.queued: list[QueuedWrite] = []
        self.forwarded: dict[int, ForwardedBatch] = {}
        self.placed: dict[int, PlacedWrite] = {}
        self._tickets = itertools.count(first_ticket)
        # The results of entries applied while forwards were unanswered, by index: a batch sent
        # again is answered after its entries may have been applied here.
        self._recent: OrderedDict[int, tuple[int, dict[str, Any] | None]] = OrderedDict()
        self._in_flight: _ForwardInFlight | None = None

    # ---- 1. queued --------------------------------------------------------------------------

    def submit(self, data: bytes, answer: Answer, now: float, leader_term: int | None = None,
               gathered: bool = False) -> None:
        self.queued.append(QueuedWrite(data, answer, now, leader_term, gathered))

    def take_batch(self, max_writes: int) -> list[QueuedWrite]:
        """The oldest queued writes still wanted, at most `max_writes` of them."""
        batch, self.queued = self.queued[:max_writes], self.queued[max_writes:]
        return [w for w in batch if not w.answer.done()]

    def fail_queued(self, held_since: float, error: Exception) -> None:
        """Fail the queued writes accepted at or before `held_since` (held for want of a leader)."""
        expired = [w for w in self.queued if w.proposed_at <= held_since]
        if expired:
            self.queued = [w for w in self.queued if w.proposed_at > held_since]
            fail([w.answer for w in expired], error)

    def forward_in_flight(self, leader: str | None, now: float, patience_s: float) -> bool:
        """Whether a forward to `leader` is still unanswered and not yet given up on."""
        f = self._in_flight
        return f is not None and f.leader == leader and now - f.sent_at < patience_s

    # ---- 2. forwarded -----------------------------------------------------------------------

    def forward(self, batch: list[QueuedWrite], leader: str, term: int, now: float) -> ProposeForward:
        """Record `batch` as sent to `leader`; the message that carries it."""
        ticket = next(self._tickets)
        self.forwarded[ticket] = ForwardedBatch(leader, term, batch, batch[0].proposed_at + self.timeout_s, now)
        self._in_flight = _ForwardInFlight(ticket, leader, now)
        return self._message(ticket, self.forwarded[ticket])

    def resends(self, leader: str, term: int, now: float, patience_s: float) -> list[ProposeForward]:
        """The batches forwarded to `leader` and unanswered for `patience_s`, to send again under
        their tickets. Those sent in an earlier term are given up (504): a leader remembers the
        tickets of its own term only, so sending them again could append them twice."""
        stale, due = [], []
        for ticket, batch in self.forwarded.items():  # one pass: this runs every loop turn
            if batch.leader != leader:
                continue
            if batch.term != term:
                stale.append(ticket)
            elif now - batch.sent_at >= patience_s:
                batch.sent_at, batch.sent_again = now, True
                due.append(ticket)
        self._give_up_forwards(stale, f"forwarded to {leader} in an earlier term, and not answered")
        return [self._message(ticket, self.forwarded[ticket]) for ticket in due]

    def _message(self, ticket: int, batch: ForwardedBatch) -> ProposeForward:
        return ProposeForward(src=self.node_id, dst=batch.leader, term=batch.term, ticket=ticket,
                              datas=tuple(w.data for w in batch.writes), oldest=min(self.forwarded))

    def place_forwarded(self, answer: ProposeAnswer, applied_index: int) -> bool:
        """The leader said where it put a batch; True if it answers the forward in flight (the
        queued writes may go now)."""
        released = self._in_flight is not None and self._in_flight.ticket == answer.ticket
        if released:
            self._in_flight = None
        batch = self.forwarded.pop(answer.ticket, None)
        if batch is None:
            return released  # it timed out already (the client got a 504)
        if answer.index == 0:
            if batch.sent_again:
                self._give_up([w.answer for w in batch.writes],
                              f"the leader {answer.src} refused a copy sent again ({answer.error}), "
                              f"and an earlier copy may have been appended")
            else:
                fail([w.answer for w in batch.writes],
                     NotAppliedError(f"the leader {answer.src} did not take the write: {answer.error}"))
            return released
        for i, w in enumerate(batch.writes):
            if answer.index + i <= applied_index:  # applied before the answer came (it was sent again)
                self._answer_late(answer.index + i, answer.term, w.answer, batch.leader)
            else:
                self.place(answer.index + i, PlacedWrite(answer.term, w.answer, w.proposed_at, batch.deadline,
                                                         batch.leader))
        return released

    def leader_changed(self, old_leader: str) -> None:
        """A client must not wait out the timeout on a leader that is gone: its batches may or may
        not have reached its log, and may yet commit."""
        self._give_up_forwards([t for t, b in self.forwarded.items() if b.leader == old_leader],
                               f"forwarded to {old_leader}, which stopped being the leader before it answered")

    def _give_up_forwards(self, tickets: list[int], why: str) -> None:
        for ticket in tickets:
            self._give_up([w.answer for w in self.forwarded.pop(ticket).writes], why)

    # ---- 3. placed --------------------------------------------------------------------------

    def place_own(self, first_index: int, term: int, batch: list[QueuedWrite]) -> None:
        """The leader proposed `batch` at `first_index`.. of `term`."""
        for i, w in enumerate(batch):
            self.place(first_index + i, PlacedWrite(term, w.answer, w.proposed_at, w.proposed_at + self.timeout_s,
                                                    None))

    def place(self, index: int, write: PlacedWrite) -> None:
        old = self.placed.get(index)
        if old is not None and old.term != write.term and not old.answer.done():
            self._not_applied(old.answer)
        self.placed[index] = write

    def wants_result(self, index: int) -> bool:
        """Whether the entry at `index` must be applied with its result: a write of this node waits
        for it, or may yet be placed there (a forwarded batch whose answer has not come)."""
        return bool(self.forwarded) or index in self.placed

    def applied(self, entry: Entry, result: dict[str, Any] | None, now: float) -> bool:
        """The entry at `entry.index` was applied with `result` (None: not a command, or not wanted); True if that
        answered a waiting write."""
        if self.forwarded:  # an answer to one of them may come after its entries are applied
            self._recent[entry.index] = (entry.term, result)
            if len(self._recent) > RECENT_RESULTS:
                self._recent.popitem(last=False)
        write = self.placed.pop(entry.index, None)
        if write is None or write.answer.done():
            return False
        if entry.term == write.term and result is not None:
            self.metrics.apply_seconds.observe(now - write.proposed_at)
            write.answer.set_result(result if write.forwarded_to is None
                                    else {**result, FORWARDED_TO: write.forwarded_to})
            return True
        self._not_applied(write.answer)
        return False

    def _answer_late(self, index: int, term: int, answer: Answer, leader: str) -> None:
        """A forwarded write whose entry was applied before the leader's answer said where it was."""
        if answer.done():
            return
        term_and_result = self._recent.get(index)
        if term_and_result is None or term_and_result[1] is None:
            answer.set_exception(OutcomeUnknownError("the answer from the leader came too late to tell"))
        elif term_and_result[0] != term:
            self._not_applied(answer)
        else:
            answer.set_result({**term_and_result[1], FORWARDED_TO: leader})

    # ---- time and shutdown ------------------------------------------------------------------

    def expire(self, now: float) -> None:
        """504 for what waited past its deadline."""
        expired = [i for i, w in self.placed.items() if w.deadline <= now]
        self._give_up([self.placed.pop(i).answer for i in expired],
                      f"not applied within {self.timeout_s} s")  # (the API says what that means for the caller)
        self._give_up_forwards([t for t, b in self.forwarded.items() if b.deadline <= now],
                               "forwarded to the leader, and no answer came in time")

    def answers(self) -> list[Answer]:
        """Every write's answer still held here."""
        return ([w.answer for w in self.queued] + [w.answer for b in self.forwarded.values() for w in b.writes]
                + [w.answer for w in self.placed.values()])

    def _give_up(self, answers: list[Answer], why: str) -> None:
        for answer in answers:
            if not answer.done():
                self.metrics.proposals_unknown.inc()
                answer.set_exception(OutcomeUnknownError(why))

    def _not_applied(self, answer: Answer) -> None:
        self.metrics.proposals_lost.inc()
        answer.set_exception(NotAppliedError("leadership changed before the write committed; it was not applied"))


class ForwardLedger:
    """A leader's answers to the batches followers forwarded in its term, by follower and ticket:
    a batch sent again (it, or its answer, was lost) gets the answer it got, and is never appended
    twice. Answers to tickets older than a follower's oldest unanswered one are forgotten, so the
    ledger holds only what its followers may still ask about; a copy of one of those that arrives
    late (over a connection that broke and was replaced, its segments retransmitted after the new
    one's) is refused, not appended: the follower no longer waits for it. A new term starts the
    ledger empty."""

    def __init__(self) -> None:
        self.term = 0
        self._answers: dict[str, dict[int, ProposeAnswer]] = {}
        self._floors: dict[str, int] = {}  # by follower: the highest `oldest` it sent in this term

    def known(self, forward: ProposeForward, term: int) -> ProposeAnswer | None:
        """The answer already given to `forward`'s batch in `term`, or None: a batch to append."""
        if term != self.term:
            self.term, self._answers, self._floors = term, {}, {}
        src, floor = forward.src, self._floors.get(forward.src, 0)
        if forward.ticket < floor:
            return ProposeAnswer(src=forward.dst, dst=src, term=term, ticket=forward.ticket, index=0,
                                 error=f"ticket {forward.ticket} is below {floor}, the oldest its sender waits for")
        answers = self._answers.setdefault(src, {})
        if forward.oldest > floor:
            self._floors[src] = forward.oldest
            for ticket in [t for t in answers if t < forward.oldest]:
                del answers[ticket]
        return answers.get(forward.ticket)

    def record(self, answers: list[ProposeAnswer]) -> None:
        for answer in answers:
            assert answer.term == self.term or answer.index == 0, "an appended batch is recorded in its term"
            self._answers.setdefault(answer.dst, {})[answer.ticket] = answer
