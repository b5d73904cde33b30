"""ReadIndex: linearizable reads without writing to the log (Raft thesis 6.4).

A read may be answered from the state machine once it has applied the commit index the leader had
when the read arrived, *provided* that leader was still the leader at that moment. The leader
proves it by hearing from a majority after the read arrived: it numbers heartbeat rounds, and a
read waits for the first round that started after it.

Batching: at most one round is in flight. Reads that arrive while a round is in flight wait for
the next one, which starts when the current round completes, so under load one heartbeat round
confirms every read that arrived during one round trip.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from .quorum import has_quorum


@dataclass(slots=True)
class PendingRead:
    ctx: bytes
    index: int  # leader's commit index when the read arrived
    requester: str  # node that asked (the leader itself, or a follower that forwarded it)


class ReadIndexQueue:
    def __init__(self) -> None:
        self.round = 0  # number of the latest round started
        self.in_flight = False
        self._acks: dict[str, int] = {}  # voter -> highest round it answered
        self._by_round: dict[int, list[PendingRead]] = {}
        self._queued: list[PendingRead] = []

    def add(self, read: PendingRead) -> None:
        self._queued.append(read)

    def start_round(self) -> int | None:
        """Start a new round for the queued reads, unless one is in flight or nothing waits."""
        if self.in_flight or not self._queued:
            return None
        self.round += 1
        self.in_flight = True
        self._by_round[self.round] = self._queued
        self._queued = []
        return self.round

    def ack(self, voter: str, read_round: int, self_id: str, voters: Collection[str]) -> list[PendingRead]:
        """Record that `voter` answered `read_round`; return the reads this confirms."""
        if read_round <= self._acks.get(voter, 0):
            return []
        self._acks[voter] = read_round
        self._acks[self_id] = self.round
        confirmed: list[PendingRead] = []
        for r in sorted(self._by_round):
            acked = {v for v, got in self._acks.items() if got >= r}
            if not has_quorum(voters, acked):
                break
            confirmed.extend(self._by_round.pop(r))
        if not self._by_round:
            self.in_flight = False
        return confirmed

    def drain(self) -> list[PendingRead]:
        """Every read still waiting (leadership lost: they must fail)."""
        waiting = [r for rs in self._by_round.values() for r in rs] + self._queued
        self._by_round.clear()
        self._queued = []
        self.in_flight = False
        return waiting

    def __len__(self) -> int:
        return len(self._queued) + sum(len(rs) for rs in self._by_round.values())
