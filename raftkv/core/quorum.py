"""Majority arithmetic, kept apart so it can be read, tested and shown on its own.

A quorum is any majority of the voters. Learners never count. The leader counts itself like any
other voter (its match index is its own last log index) and only when it is still a voter, which
is how a leader that removed itself keeps replicating without counting its own copy.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from enum import Enum


class VoteResult(Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(voter_count: int) -> int:
    return voter_count // 2 + 1


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """The highest index stored on a majority of voters."""
    if not voters:
        return 0
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(voters)) - 1]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[str], members: Collection[str]) -> bool:
    """Whether `members` include a majority of `voters`."""
    return sum(1 for v in voters if v in members) >= majority(len(voters))
