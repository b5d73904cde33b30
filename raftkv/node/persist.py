"""The disk pump: persist before send, with one fsync for every Ready handed out meanwhile.

Theory of operation
-------------------
The group hands each Ready that writes something, or holds messages, to `hand()` and goes on at
once, so ticks, heartbeats and reads keep flowing during a slow fsync. The pump's task takes every
Ready handed out so far as one batch: writes their snapshot, entries and hard state, fsyncs once
(group commit across Readys), and only then sends their held `messages`: a vote or an append
acknowledgement leaves only once what it vouches for is on disk (Raft figure 2, "respond after
persisting"). Then it reports the newest written entry with `on_persisted`, because a leader
counts its own copy towards a commit only once it is durable (Raft thesis 10.2.1: the leader
writes in parallel with its followers).

Readys are written in the order they were handed out, and a Ready's messages wait for every
Ready before it, so the order the core chose is kept. A batch that only records a new commit index
(`Ready.must_sync()` is false) is written but not fsynced: the next fsync carries it.

Where the fsync runs is the caller's choice (`sync_off_loop`): a leader fsyncs on a thread so its
heartbeats never wait for its disk; a follower fsyncs on the loop, since its acknowledgements wait
for the fsync anyway and the hand-off to a thread costs about 85 us of wake-ups (bench/PROFILE.md).
The storage takes one caller at a time: snapshots written by the group go through `save_snapshot`,
under the same lock. The disk thread is the pump's own unless the caller gives an executor (a
simulation on a virtual clock gives one that runs the work on its loop, so runs replay exactly);
an executor given stays its owner's, and the pump never shuts it down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor

from raftkv.core import Message, Ready, Snapshot
from raftkv.storage import RaftStorage

from .metrics import NodeMetrics
from .tracing import Tracing

__all__ = ["DiskPump"]

UNSAFE_SYNC_EVERY_S = 3.0  # --unsafe-skip-fsync: long enough that every crash loses acknowledged writes


class DiskPump:
    def __init__(self, node_id: str, storage: RaftStorage, send: Callable[[list[Message]], None],
                 on_persisted: Callable[[int, int], None], sync_off_loop: Callable[[], bool], metrics: NodeMetrics,
                 *, unsafe_skip_fsync: bool = False, executor: Executor | None = None) -> None:
        self.storage = storage
        self._send = send
        self._on_persisted = on_persisted
        self._sync_off_loop = sync_off_loop
        self._metrics = metrics
        self._unsafe_skip_fsync = unsafe_skip_fsync
        self._unsynced: list[Ready] = []
        # (index, term) of the newest log position written: the last entry, or an installed snapshot
        self._written: tuple[int, int] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._own_thread = executor is None
        self._thread = executor or ThreadPoolExecutor(1, thread_name_prefix=f"{node_id}-wal")
        self._last_unsafe_sync = time.monotonic()
        self.tracing: Tracing | None = None  # set by the group while tracing is on (tracing.py)

    def hand(self, rd: Ready) -> None:
        """Queue a Ready whose writes and held messages must go out in order after the last."""
        self._unsynced.append(rd)
        self._wake.set()

    @property
    def busy(self) -> bool:
        """Readys are waiting: a Ready with nothing to write must still queue behind them."""
        return bool(self._unsynced)

    async def run(self, after_batch: Callable[[], None]) -> None:
        """The pump's task: write batches as they come, calling `after_batch` after each."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._unsynced:
                await self.flush()
                after_batch()

    async def flush(self) -> None:
        """Write, fsync and send everything handed out so far."""
        async with self._lock:
            await self._write_batch()

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._thread, self.storage.save_snapshot, snapshot)

    async def close(self) -> None:
        """After the pump's task is cancelled: let a cancelled batch's fsync finish, write what was
        handed out since, and close the storage."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, lambda: None)
        await self.flush()
        await loop.run_in_executor(self._thread, self.storage.close)
        if self._own_thread:
            self._thread.shutdown(wait=True)

    async def _write_batch(self) -> None:
        batch, self._unsynced = self._unsynced, []
        if not batch:
            return
        loop = asyncio.get_running_loop()
        storage, entries = self.storage, 0
        # Entries are traced before they reach the pump (the leader's propose, a follower's EntryTraces):
        # a batch that starts with none held has none to trace, and takes no timestamps.
        tracing = self.tracing if self.tracing is not None and self.tracing.holds_entries() else None
        started_ns = time.time_ns() if tracing is not None else 0
        for rd in batch:
            if rd.snapshot is not None:  # saved durably on its own (a file written, fsynced, renamed)
                await loop.run_in_executor(self._thread, storage.save_snapshot, rd.snapshot)
                self._written = (rd.snapshot.meta.index, rd.snapshot.meta.term)
            if rd.entries:
                storage.append(rd.entries)
                self._written = (rd.entries[-1].index, rd.entries[-1].term)
                entries += len(rd.entries)
            if rd.hard_state is not None:
                storage.set_hard_state(rd.hard_state)
        must_sync = any(rd.must_sync() for rd in batch)
        written_ns = synced_ns = time.time_ns() if tracing is not None else 0
        synced = must_sync and self._sync_now()
        leading = self._sync_off_loop()
        if synced:
            started = time.perf_counter()
            if leading:
                await loop.run_in_executor(self._thread, storage.sync)
            else:
                storage.sync()
            self._metrics.fsync_seconds.observe(time.perf_counter() - started)
            self._metrics.fsync_batch.observe(entries)
            if tracing is not None:
                synced_ns = time.time_ns()
        for rd in batch:
            if rd.messages:
                self._send(rd.messages)
        if tracing is not None and entries:
            tracing.persisted((e for rd in batch for e in rd.entries), started_ns, written_ns,
                              synced_ns if synced else None, time.time_ns(),
                              acknowledging=not leading and any(rd.messages for rd in batch))
        if self._written is not None and (must_sync or any(rd.snapshot is not None for rd in batch)):
            self._on_persisted(*self._written)

    def _sync_now(self) -> bool:
        """Always, unless deliberately unsafe: then what is only in memory is acknowledged, and
        synced every UNSAFE_SYNC_EVERY_S (for proving that the chaos checker notices)."""
        if not self._unsafe_skip_fsync:
            return True
        if time.monotonic() - self._last_unsafe_sync < UNSAFE_SYNC_EVERY_S:
            return False
        self._last_unsafe_sync = time.monotonic()
        return True
