"""ReadIndex: linearizable reads without writing to the log (Raft thesis 6.4).

A read may be answered from the state machine once it has applied the commit index the leader had
when the read arrived, *provided* that leader was still the leader at that moment. The leader
proves it by hearing from a majority after the read arrived: it numbers heartbeat rounds, and a
read waits for the first round that started after it.

Batching: at most one round is in flight. Reads that arrive while a round is in flight wait for
the next one, which starts when the current round completes, so under load one heartbeat round
confirms every read that arrived during one round trip.

A round asks only as many voters as a majority needs besides the leader (`to_ask`): one of two
followers in a cluster of three. Every answer beyond a majority's was work for nothing, and under
reads a follower's whole load is these heartbeats. It asks those that answered soonest last: a
voter that answered the newest round ranks first, and among those that answered it, the one
that answered first. The leader's periodic heartbeats still go to every voter and carry the
latest round, so a chosen voter that has gone quiet delays a round by one heartbeat interval at
most; the voter that answers in its place then ranks first.

A follower's read needs no round at all when that follower makes a majority with the leader (a
cluster of three): the leader answers at once, and the follower's own acceptance of the answer is
the second acknowledgement. The proof is the round's: a leader of a later term needs a majority,
which must include this leader or the follower. Had this leader voted for it before recording the
index, it would no longer lead; had the follower, it would be in a later term when the answer
arrives and drop it (a core ignores a message of an older term). So any later leader was elected
after the index was recorded, and everything acknowledged before the read began is at or below
it. The follower then reads once it has applied the index, as after a round.
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
        self._answered = 0  # answers that raised a voter's round, counted: their order
        self._order: dict[str, int] = {}  # voter -> when (that count) it answered its highest round
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
        self._answered += 1
        self._order[voter] = self._answered
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

    def to_ask(self, self_id: str, voters: Collection[str]) -> list[str]:
        """The voters to ask for a round: the fewest besides `self_id` that make a majority with
        it, those that answered the latest rounds soonest first (see the module's doc)."""
        ranked = sorted((v for v in voters if v != self_id),
                        key=lambda v: (-self._acks.get(v, 0), self._order.get(v, 0), v))
        asked: list[str] = []
        for voter in ranked:
            if has_quorum(voters, {self_id, *asked}):
                break
            asked.append(voter)
        return asked

    def drain(self) -> list[PendingRead]:
        """Every read still waiting (leadership lost: they must fail)."""
        waiting = [r for rs in self._by_round.values() for r in rs] + self._queued
        self._by_round.clear()
        self._queued = []
        self.in_flight = False
        return waiting

    def __len__(self) -> int:
        return len(self._queued) + sum(len(rs) for rs in self._by_round.values())
