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
before fsync loses writes.

`lying_fsync` models a disk whose fsync returns without persisting (a volatile write cache):
sync() then keeps the pending operations pending, so a later crash() loses writes the node
believed durable. A real sync after the flag is cleared persists them all, in order.

Both images apply the very same rules as DiskStorage (see base.py), so a test that passes here
and fails on disk points at the disk code, not at a different contract.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raftkv.core.messages import DurableState, Entry, HardState, Snapshot
from raftkv.storage.base import StorageClosedError, StorageStats, check_append, check_snapshot_order


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

    def term_at(self, index: int) -> int | None:
        base = self.base
        if index == base:
            return self.snapshot.meta.term if self.snapshot else 0
        if base < index <= base + len(self.entries):
            return self.entries[index - base - 1].term
        return None

    def append(self, entries: list[Entry]) -> None:
        del self.entries[entries[0].index - self.base - 1 :]  # Raft truncation: i replaces i..end
        self.entries.extend(entries)

    def install(self, snapshot: Snapshot) -> None:
        # Paper section 7: keep the log after the snapshot only if it agrees at the snapshot index.
        index, term = snapshot.meta.index, snapshot.meta.term
        keep = self.term_at(index) == term
        self.entries = self.entries[index - self.base :] if keep else []
        self.snapshot = snapshot

    def copy(self) -> _Image:
        return _Image(self.hard_state, self.snapshot, list(self.entries))


# A pending operation: ("a", entries) | ("h", hard_state) | ("s", snapshot)
_Op = tuple[str, object]


class MemoryStorage:
    """RaftStorage kept in memory, with crash() to lose whatever was not synced."""

    def __init__(self, *, lying_fsync: bool = False) -> None:
        self.lying_fsync = lying_fsync
        self._current = _Image()
        self._durable = _Image()
        self._pending: list[_Op] = []
        self._pending_bytes = 0
        self._closed = False
        self._stats = StorageStats()

    @property
    def stats(self) -> StorageStats:
        return self._stats

    def load(self) -> DurableState:
        self._check_open()
        cur = self._current
        return DurableState(hard_state=cur.hard_state, snapshot=cur.snapshot, entries=list(cur.entries))

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
        self._stats.snapshot_index = snapshot.meta.index
        self._stats.snapshot_bytes = len(snapshot.data)

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
        self._stats.snapshot_index = snap.meta.index if snap else 0
        self._stats.snapshot_bytes = len(snap.data) if snap else 0
        self._closed = False

    def close(self) -> None:
        if self._closed:
            return
        self.sync()
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError("MemoryStorage is closed (crash() reopens it)")
