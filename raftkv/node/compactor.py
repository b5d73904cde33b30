"""Automatic compaction of key history (etcd's --auto-compaction-retention).

The leader proposes a `Compact` through the log, so every replica forgets the same history at the
same index. Two retentions, either or both: by revisions (keep the last N revisions of history;
the default bounds memory however the store is used) and by time (keep what changed in the last
T seconds: the leader samples its revision every `SAMPLE_EVERY_S` and compacts to the newest
sample at least T old). Compaction runs when it would free at least a tenth of the retention, so
it is a rare entry, not one per write.

Each entry forgets at most `STEP_CHANGES` changes (`MVCCStore.compaction_step`), then the next
follows a moment later until the target is reached. Every replica compacts in one turn of its
loop, about a microsecond per change forgotten: the first compaction after a bulk load of a
million keys held all three nodes' loops for a second at once, and the cluster elected a new
leader (bench/PROFILE.md, nineteenth round).

A compaction a client asks for (`POST /compact`, etcd's `Compact`) takes the same steps, one
entry after the other without a pause (`compact_in_steps`), and is answered once the last has
applied. A revision in the future must be refused before any step forgets anything, so a
compaction of more than one step is checked first, after a read barrier: this replica then holds
every revision committed before the request, and revisions only grow.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from raftkv.core import Role
from raftkv.kv import Compact

from .errors import NodeError
from .group import RaftGroup

__all__ = ["Compactor", "compact_in_steps"]

log = logging.getLogger("raftkv.node")

CHECK_EVERY_S = 5.0
SAMPLE_EVERY_S = 10.0
STEP_CHANGES = 20_000  # changes one compaction entry forgets at most: about 20 ms of every replica's loop
STEP_PAUSE_S = 0.1  # between the steps of a compaction that has further to go


class Compactor:
    def __init__(self, group: RaftGroup, retention_revisions: int | None, retention_s: float | None) -> None:
        assert retention_revisions is None or retention_revisions >= 1
        self.group = group
        self.retention_revisions = retention_revisions
        self.retention_s = retention_s
        self._samples: collections.deque[tuple[float, int]] = collections.deque()  # (when, revision)
        self.behind = False  # the last step stopped short of its target

    async def run(self) -> None:
        while True:
            await asyncio.sleep(STEP_PAUSE_S if self.behind else min(CHECK_EVERY_S, SAMPLE_EVERY_S))
            await self.check(time.monotonic())

    def target(self, now: float) -> int | None:
        """The revision to compact to now, if compacting would be worth an entry: a step of at
        most `STEP_CHANGES` changes toward where the retention says."""
        kv = self.group.kv
        if self.retention_s is not None and (not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY_S):
            self._samples.append((now, kv.revision))
        targets = []
        if self.retention_revisions is not None:
            targets.append(kv.revision - self.retention_revisions)
        if self.retention_s is not None:
            while len(self._samples) > 1 and now - self._samples[1][0] >= self.retention_s:
                self._samples.popleft()
            if now - self._samples[0][0] >= self.retention_s:
                targets.append(self._samples[0][1])
        target = max(targets, default=0)
        slack = max(1, (self.retention_revisions or 10) // 10)
        if target - kv.store.compacted < slack:
            self.behind = False
            return None
        step = kv.store.compaction_step(target, STEP_CHANGES)
        self.behind = step < target
        return step

    async def check(self, now: float) -> None:
        if self.group.core.role is not Role.LEADER:
            self._samples.clear()
            self.behind = False
            return
        target = self.target(now)
        if target is None:
            return
        try:
            result = await self.group.propose(Compact(target))
            log.info("compacted node=%s to revision %d (%s versions dropped)", self.group.id, target,
                     result.get("dropped"))
        except NodeError as e:
            log.info("compaction not committed node=%s: %s", self.group.id, e)


async def compact_in_steps(group: RaftGroup, revision: int) -> dict[str, Any]:
    """Compact history to `revision` in entries of at most `STEP_CHANGES` changes each; the last
    entry's answer, with the versions every step dropped, or the refusal (nothing forgotten)."""
    kv = group.kv
    if kv.store.compaction_step(revision, STEP_CHANGES) < revision:
        await group.read_barrier()
        refused = kv.compaction_refused(revision)
        if refused is not None:
            return refused
    dropped, reached = 0, kv.store.compacted
    while True:
        step = kv.store.compaction_step(revision, STEP_CHANGES)
        assert step > reached or step == revision, (step, reached, revision)  # each step forgets something
        result = await group.propose(Compact(step))
        if not result.get("ok"):
            return result
        dropped += result["dropped"]
        if step == revision:
            return {**result, "dropped": dropped}
        reached = step
