"""When a group takes a snapshot of its state machine, and how, without stalling its loop.

Theory of operation
-------------------
After each batch the disk pump wrote, the group asks `maybe_start`: once the applied index crosses
into a new window of `every` entries, and only at an index the WAL already holds (so entries still
being written never precede it), a snapshot is taken in a task of its own. Each voter's windows are
shifted by its rank among the voters, `every / n` entries apart, so the voters take their snapshots
at different indexes: a snapshot's file is as big as the store (about 110 MB for 100,000 versions
of 1 KiB), and the disk thread writing it holds the node's appends and fsyncs behind it for 0.1 s
or more. At one index on every voter no majority could make a write durable meanwhile; staggered,
the others make one (a leader whose disk is held commits through its followers). A voter's first
snapshot therefore comes after `every` entries or fewer. The state machine is frozen on the loop
(a copy-on-write image, `snapshot_later`) and encoded on the loop too, a part of a few hundred rows
per turn between the loop's other work: a million keys take seconds to encode, far longer than an
election timeout. Not in a thread: packing holds the interpreter's lock, so a loop beside an encoding thread
ran about once per switch interval (5 ms) while it lasted, on every node at once (bench/PROFILE.md,
eighteenth round). The snapshot is then written through the disk pump (one storage caller at a
time) and the core compacts its log, keeping `snapshot_retain_entries` so a briefly lagging
follower still gets appends, not a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from concurrent.futures import Executor

from raftkv.core import RaftCore
from raftkv.kv import KVStateMachine

from .config import NodeConfig
from .heap import collect_young
from .metrics import NodeMetrics
from .persist import DiskPump

__all__ = ["Snapshotter", "pack_between_turns"]

log = logging.getLogger("raftkv.node")


class Snapshotter:
    def __init__(self, cfg: NodeConfig, core: RaftCore, kv: KVStateMachine, pump: DiskPump, metrics: NodeMetrics,
                 snapshot_index: int, executor: Executor | None = None) -> None:
        self.cfg, self.core, self.kv, self.pump, self.metrics = cfg, core, kv, pump, metrics
        self.executor = executor  # where the packed parts are joined (None: the loop's default pool)
        self.snapshot_index = snapshot_index  # of the newest snapshot taken or installed
        self.every = cfg.snapshot_every  # applied entries between snapshots (the lab lowers it at run time)
        self._task: asyncio.Task | None = None

    def maybe_start(self) -> None:
        if not self.every:
            return
        applied, shift = self.kv.applied_index, self._window_shift()
        due = (applied + shift) // self.every > (self.snapshot_index + shift) // self.every
        if due and self._task is None and applied <= self.core.durable_index:
            self._task = asyncio.get_running_loop().create_task(self._take())

    def _window_shift(self) -> int:
        """How far this node's windows of `every` entries are shifted: its rank among the voters
        times `every / n`."""
        voters = sorted(self.core.conf.voters)
        rank = voters.index(self.cfg.node_id) if self.cfg.node_id in voters else 0
        return rank * self.every // max(1, len(voters))

    def installed(self, index: int) -> None:
        """The leader's snapshot at `index` replaced the state machine."""
        self.snapshot_index = index
        self.metrics.snapshots.labels("installed").inc()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _take(self) -> None:
        try:
            started = time.perf_counter()
            applied = self.kv.applied_index
            data = await pack_between_turns(self.kv.snapshot_later(), self.executor)
            if self.core.snapshot_index >= applied:
                # A snapshot from the leader was installed meanwhile and covers this one. The core
                # holds it from the step that accepted it, before its Ready reaches `installed`.
                return
            snapshot = self.core.make_snapshot(applied, data)
            await self.pump.save_snapshot(snapshot)
            self.core.compact(snapshot, retain_entries=self.cfg.snapshot_retain_entries)
            self.snapshot_index = applied
            self.metrics.snapshots.labels("taken").inc()
            self.metrics.snapshot_seconds.observe(time.perf_counter() - started)
            self.metrics.snapshot_bytes.set(len(snapshot.data))
            log.info("snapshot node=%s index=%d bytes=%d", self.cfg.node_id, applied, len(snapshot.data))
        except Exception:
            log.exception("snapshot failed node=%s; will retry at the next threshold", self.cfg.node_id)
        finally:
            self._task = None


async def pack_between_turns(parts: Iterator[bytes], executor: Executor | None = None) -> bytes:
    """A frozen image's parts (`KVStateMachine.snapshot_later`) joined, packed one per turn of
    the event loop so that its other work goes between them. An empty part grew the packing (keys
    sorted a run at a time), and a young collection then puts the run where the next ones do not
    walk it. The parts are joined in `executor` (None: the loop's default pool): `bytes.join`
    lets go of the interpreter's lock, and on the loop, joining a snapshot of 1 KiB values (about
    110 MB) held it for 340-570 ms, on every node at once (bench/PROFILE.md, nineteenth round)."""
    packed = []
    for part in parts:
        if part:
            packed.append(part)
        else:
            collect_young()
        await asyncio.sleep(0)
    return await asyncio.get_running_loop().run_in_executor(executor, b"".join, packed)
