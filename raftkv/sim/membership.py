"""Who is in the simulated cluster, and which membership change the simulation tries next.

Theory of operation
-------------------
A server has a *name* ("n2") and, each time it joins with a fresh disk, a new *incarnation* with
an id of its own ("n2", then "n2#2", "n2#3"). Raft knows servers only by id, so a vote,
acknowledgement or message of an old incarnation can never count for a new one: that is how a
real deployment must re-add a machine whose disk was wiped, and the checks in invariants.py,
keyed by id, span every incarnation.

The `Roster` follows the configuration that is *committed*, from the configuration entries the
replicas apply (applied implies committed, and replicas apply in log order, so the newest entry
applied anywhere is the newest committed configuration). A server whose removal committed has
*left*: no later configuration can bring that id back, so its process may be stopped for good.
One that is in no configuration yet (its addition is still pending, or was lost with a deposed
leader's log) might still become a member and is never stopped.

`plan_change` picks a random single-server change a leader could accept now: add a learner
(a brand-new name, or a name whose incarnation left, under a new id), promote a learner, remove a
voter, remove the leader itself, remove a learner. It keeps at least `min_voters` voters and at
most one member more than the cluster started with. `restoring_change` is the deterministic step
towards a healthy cluster of `min_voters` voters that the end of a run needs for its liveness
check.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from raftkv.core import ConfChange, ConfChangeKind, ConfState, RaftCore


@dataclass
class Roster:
    founders: tuple[str, ...]
    committed: ConfState = field(init=False)  # the newest configuration applied anywhere
    committed_index: int = field(init=False, default=0)  # its entry's index (0: the founders)
    left: set[str] = field(init=False, default_factory=set)  # ids whose removal committed
    incarnations: dict[str, int] = field(init=False)  # name -> incarnations started

    def __post_init__(self) -> None:
        self.committed = ConfState(self.founders)
        self.incarnations = dict.fromkeys(self.founders, 1)

    @staticmethod
    def name_of(node_id: str) -> str:
        return node_id.partition("#")[0]

    def current_id(self, name: str) -> str:
        n = self.incarnations[name]
        return name if n == 1 else f"{name}#{n}"

    def next_id(self, name: str) -> str:
        """The id `name` joins under next: new names keep their plain name, old ones count up."""
        n = self.incarnations.get(name, 0) + 1
        return name if n == 1 else f"{name}#{n}"

    def joined(self, node_id: str) -> str | None:
        """Count a new incarnation as started; returns the id of the one it replaces, if any."""
        name = self.name_of(node_id)
        previous = self.current_id(name) if name in self.incarnations else None
        self.incarnations[name] = self.incarnations.get(name, 0) + 1
        assert self.current_id(name) == node_id, f"{node_id} is not the next incarnation of {name}"
        return previous

    def on_applied(self, index: int, change: ConfChange) -> ConfState | None:
        """A replica applied the configuration entry at `index`; returns the new committed
        configuration if this is the first replica to apply it."""
        if index <= self.committed_index:
            return None
        new = change.apply_to(self.committed)
        self.left |= set(self.committed.members()) - set(new.members())
        self.committed, self.committed_index = new, index
        return new

    def joinable_names(self) -> list[str]:
        """Names a new server may join under: those whose incarnation left, and one never used."""
        return [*self.rejoinable_names(), self.new_name()]

    def rejoinable_names(self) -> list[str]:
        """Names whose newest incarnation left: each may join again with a fresh disk."""
        return sorted(name for name in self.incarnations if self.current_id(name) in self.left)

    def new_name(self) -> str:
        """A name no server has had, in the founders' pattern ("n4" after n1..n3)."""
        taken = {int(name[1:]) for name in self.incarnations if name[1:].isdigit()}
        return f"n{max(taken, default=0) + 1}"


def plan_change(rng: random.Random, roster: Roster, leader: RaftCore, min_voters: int) -> ConfChange | None:
    """A random change `leader` could accept under its configuration, or None if none fits. The
    kind of change is drawn first, so that a rare kind (promoting the one learner) is not drowned
    by a common one (removing any of five voters)."""
    conf = leader.conf
    may_grow = len(conf.members()) <= len(roster.founders)
    may_shrink = len(conf.voters) > min_voters
    options = [
        (ConfChangeKind.ADD_LEARNER, [roster.next_id(name) for name in roster.joinable_names()] if may_grow else []),
        (ConfChangeKind.ADD_VOTER, list(conf.learners)),
        (ConfChangeKind.REMOVE, list(conf.learners)),
        (ConfChangeKind.REMOVE, [v for v in conf.voters if v != leader.id] if may_shrink else []),
        (ConfChangeKind.REMOVE, [leader.id] if may_shrink and leader.id in conf.voters else []),
    ]
    options = [(kind, ids) for kind, ids in options if ids]
    if not options:
        return None
    kind, ids = rng.choice(options)
    return ConfChange(kind, rng.choice(ids))


def restoring_change(roster: Roster, conf: ConfState, min_voters: int) -> ConfChange | None:
    """The next step from `conf` towards `min_voters` voters (None: there are enough).

    First enough learners join, so that they catch up at the same time (adding a learner commits
    at once: it changes no quorum); then they are promoted without waiting for them to catch up,
    which a leader whose clients write faster than its flow control lets a newcomer follow would
    wait for forever. Until a promoted learner has caught up, commits wait for it.
    """
    shortfall = min_voters - len(conf.voters)
    if shortfall <= 0:
        return None
    if len(conf.learners) < shortfall:
        names = roster.rejoinable_names() or [roster.new_name()]
        return ConfChange(ConfChangeKind.ADD_LEARNER, roster.next_id(names[0]))
    return ConfChange(ConfChangeKind.ADD_VOTER, conf.learners[0])


def describe(change: ConfChange) -> str:
    return f"{change.kind.value.replace('_', ' ')} {change.node_id}"
