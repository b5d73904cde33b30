"""Deliberately broken Raft cores, each with one classic bug, to prove the simulator's checks bite.

Each overrides exactly one of the core's seams; nothing here is importable from the package.
"""

from __future__ import annotations

from raftkv.core import AppendRequest, ConfState, HardState, RaftCore, Ready, VoteRequest
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


class AdoptsConfOnCommit(RaftCore):
    """Acts on a configuration only once its entry is committed, not as soon as it is appended
    (thesis 4.1 asks for the latest one in the log). A node that has not yet heard the commit of
    the newest change keeps an older configuration, so three configurations can be in use at once,
    two of them with disjoint majorities."""

    def _conf_in_effect(self) -> ConfState:
        return self._conf_at(self.log.committed)

    def ready(self) -> Ready:
        # The commit index moved during the last input; the configuration it made committed
        # takes effect now (the core only looks for a new configuration when entries arrive).
        if self._conf_in_effect() != self.conf:
            self._set_conf(self._conf_in_effect())
        return super().ready()


class OverlapsConfChanges(RaftCore):
    """Accepts a membership change while the previous one is still uncommitted, so two changes
    can be in flight: the configurations before and after both can differ by two servers."""

    def _conf_change_pending(self) -> bool:
        return False


# The bugs the randomized simulator must find within its seeds. Figure 8's old-term commit needs a
# five-step crash sequence random faults rarely produce; tests/test_core_scenarios.py replays it.
BUGS = {
    "double-vote": VotesTwicePerTerm,
    "no-truncate": KeepsConflictingSuffix,
    "unconfirmed-read": ReadsWithoutConfirmingLeadership,
    "forgets-vote": ForgetsItsVote,
    "stale-log-wins": IgnoresLastLogTerm,
    "conf-on-commit": AdoptsConfOnCommit,
    "overlapping-conf-changes": OverlapsConfChanges,
}
