"""MemoryStorage: the in-memory twin of DiskStorage, for tests and the deterministic simulator.

Theory of operation
-------------------
The storage keeps two images of the same state: `current` (everything written, what `load()`
returns while the node runs) and `durable` (what a disk would hold after the last fsync). Writes
apply to `current` at once and are also queued as *pending operations*; `sync()` replays the
pending operations onto `durable`. That costs O(batch) per sync rather than copying the log.

`crash()` models the process (or machine) dying: `current` is rebuilt from `durable`, so every
write not followed by a sync is gone. A simulator calls `crash()` and then `load()` to restart
a node with exactly what a real disk would have kept, which is how it shows that acknowledging
before fsync loses writes (sim/replica.py keeps each simulated server's disk in one).

`lying_fsync` models a disk whose fsync returns without persisting (a volatile write cache):
sync() then keeps the pending operations pending, so a later crash() loses writes the node
believed durable. A real sync after the flag is cleared persists them all, in order.

Both images apply the very same rules as DiskStorage (see base.py), so a test that passes here
and fails on disk points at the disk code, not at a different contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv.core.messages import DurableState, Entry, HardState, Snapshot
from raftkv.storage.base import (
    StorageClosedError,
    StorageStats,
    check_append,
    check_snapshot_order,
    entries_after_snapshot,
    loaded_state,
)


@dataclass(slots=True)
class _Image:
    """One copy of the durable state; entries[k] has index snapshot_index + 1 + k."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    @property
    def base(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    def last_index(self) -> int:
        return self.base + len(self.entries)

    def append(self, entries: list[Entry]) -> None:
        del self.entries[entries[0].index - self.base - 1 :]  # Raft truncation: i replaces i..end
        self.entries.extend(entries)

    def install(self, snapshot: Snapshot) -> None:
        before = self.snapshot.meta.term if self.snapshot else 0
        self.entries = entries_after_snapshot(self.entries, snapshot.meta.index, snapshot.meta.term, before)
        self.snapshot = snapshot

    def copy(self) -> _Image:
        return _Image(self.hard_state, self.snapshot, list(self.entries))


# A pending operation: ("a", entries) | ("h", hard_state) | ("s", snapshot)
_Op = tuple[str, object]


class MemoryStorage:
    """RaftStorage kept in memory, with crash() to lose whatever was not synced."""

    def __init__(self, initial: DurableState | None = None, *, lying_fsync: bool = False) -> None:
        """An empty storage, or one whose disk already holds `initial` (synced, as after a clean
        shutdown): a simulator hands a server a made-up disk this way."""
        self.lying_fsync = lying_fsync
        self._stats = StorageStats()
        self._durable = _Image()
        if initial is not None:
            snap = initial.snapshot
            self._durable = _Image(initial.hard_state, snap, [])
            if initial.entries:  # they must follow the snapshot, as if appended to it
                check_append(initial.entries, self._durable.base, self._durable.base)
                self._durable.entries = list(initial.entries)
            self._stats.note_snapshot(snap, len(snap.data) if snap else 0)
        self._current = self._durable.copy()
        self._pending: list[_Op] = []
        self._pending_bytes = 0
        self._closed = False

    @property
    def stats(self) -> StorageStats:
        return self._stats

    def load(self) -> DurableState:
        self._check_open()
        cur = self._current
        return loaded_state(cur.hard_state, cur.snapshot, cur.entries)

    def append(self, entries: list[Entry]) -> None:
        self._check_open()
        if not entries:
            return
        check_append(entries, self._current.base, self._current.last_index())
        entries = list(entries)  # the caller may reuse its list
        self._current.append(entries)
        self._pending.append(("a", entries))
        self._pending_bytes += sum(len(e.data) for e in entries)

    def set_hard_state(self, hs: HardState) -> None:
        self._check_open()
        self._current.hard_state = hs
        self._pending.append(("h", hs))

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        check_snapshot_order(snapshot, self._current.base)
        self._current.install(snapshot)
        self._pending.append(("s", snapshot))
        self._pending_bytes += len(snapshot.data)
        self.sync()  # durable on return, like the disk version (which syncs the WAL marker)
        self._stats.note_snapshot(snapshot, len(snapshot.data))

    def sync(self) -> None:
        self._check_open()
        if not self._pending:
            return
        stats = self._stats
        stats.syncs_total += 1
        stats.fsyncs_total += 1
        stats.last_fsync_seconds = 0.0
        stats.last_sync_records = sum(len(op[1]) if op[0] == "a" else 1 for op in self._pending)  # type: ignore[arg-type]
        stats.last_sync_bytes = self._pending_bytes
        if self.lying_fsync:
            return  # acknowledged, not persisted: the ops stay pending and crash() drops them
        durable = self._durable
        for kind, value in self._pending:
            if kind == "a":
                durable.append(value)  # type: ignore[arg-type]
            elif kind == "h":
                durable.hard_state = value  # type: ignore[assignment]
            else:
                durable.install(value)  # type: ignore[arg-type]
        stats.wal_bytes += self._pending_bytes
        self._pending.clear()
        self._pending_bytes = 0

    def last_index(self) -> int:
        return self._current.last_index()

    def crash(self) -> None:
        """The process died: forget everything not synced. The storage can be loaded again."""
        self._pending.clear()
        self._pending_bytes = 0
        self._current = self._durable.copy()
        snap = self._current.snapshot
        self._stats.note_snapshot(snap, len(snap.data) if snap else 0)
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError("MemoryStorage is closed (crash() reopens it)")
