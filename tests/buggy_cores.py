"""Deliberately broken Raft cores, each with one classic bug, to prove the simulator's checks bite.

Each overrides exactly one of the core's seams; nothing here is importable from the package.
"""

from __future__ import annotations

from raftkv.core import AppendRequest, HardState, RaftCore, VoteRequest
from raftkv.core.readonly import PendingRead


class CommitsOldTermEntries(RaftCore):
    """Commits by counting replicas of any entry, ignoring Raft 5.4.2 (the paper's figure 8)."""

    def _can_commit(self, index: int) -> bool:
        return True


class VotesTwicePerTerm(RaftCore):
    """Grants its vote to every candidate with an up-to-date log, even after voting this term."""

    def _can_vote(self, m: VoteRequest) -> bool:
        return True


class KeepsConflictingSuffix(RaftCore):
    """Appends only entries past its last index and never truncates a conflicting suffix."""

    def _accept_entries(self, m: AppendRequest) -> int:
        last = self.log.last_index()
        new = [e for e in m.entries if e.index > last]
        if new:
            self._append(new)
        return m.prev_log_index + len(m.entries)


class ReadsWithoutConfirmingLeadership(RaftCore):
    """Answers ReadIndex at once from its commit index, as if it were surely still the leader."""

    def _leader_read(self, read: PendingRead) -> None:
        read.index = self.log.committed
        self._answer_read(read, ok=True)


class ForgetsItsVote(RaftCore):
    """Leaves the vote out of the durable hard state, so a restarted node can vote again."""

    def _hard_state(self) -> HardState:
        return HardState(self.term, None, self.log.committed)


class IgnoresLastLogTerm(RaftCore):
    """Judges 'up to date' by log length alone, so a long stale log can win (breaks Raft 5.4.1)."""

    def _handle_vote_request(self, m: VoteRequest) -> None:
        longer = m.last_log_index >= self.log.last_index()
        # Pretend the candidate's last term equals ours so only the length decides.
        super()._handle_vote_request(
            VoteRequest(
                src=m.src,
                dst=m.dst,
                term=m.term,
                last_log_index=m.last_log_index,
                last_log_term=self.log.last_term() if longer else -1,
                pre_vote=m.pre_vote,
                transfer=m.transfer,
            )
        )


# The bugs the randomized simulator must find within its seeds. Figure 8's old-term commit needs a
# five-step crash sequence random faults rarely produce; tests/test_core_scenarios.py replays it.
BUGS = {
    "double-vote": VotesTwicePerTerm,
    "no-truncate": KeepsConflictingSuffix,
    "unconfirmed-read": ReadsWithoutConfirmingLeadership,
    "forgets-vote": ForgetsItsVote,
    "stale-log-wins": IgnoresLastLogTerm,
}
