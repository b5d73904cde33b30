"""The storage interface a Raft node persists through, and the rules every implementation shares.

Theory of operation
-------------------
A Raft node must make three things durable before it acts on them (Raft paper, figure 2):
its log, its hard state (term, vote, commit) and, once the log is compacted, a snapshot that
stands in for the log prefix it covers. `RaftStorage` is the narrow interface for that:

* `append`, `set_hard_state` only *stage* writes; `sync` makes everything staged so far durable
  at once (group commit: one fsync for many entries). The node calls `sync` before it sends the
  messages that promise durability (votes, append acknowledgements).
* `append` follows Raft's truncation rule: an entry at index i replaces the stored entry i and
  everything after it. Entries handed in one call are contiguous.
* `save_snapshot` is durable and atomic on return (it syncs whatever was staged too). The log is
  then kept only after the snapshot, and only if it agrees with it: the paper's section 7 rule,
  "if an existing entry has the same index and term as the snapshot's last included entry,
  retain the entries following it; otherwise discard the entire log".
* `load` returns what the storage holds; after a crash or reopen that is exactly what was synced.

Two implementations honour the same contract: `MemoryStorage` (tests, deterministic simulation;
it can `crash()`) and `DiskStorage` (segmented WAL plus snapshot files). The helpers below hold
the rules both must apply identically, so the twin cannot drift from the real thing: which appends
are valid (`check_append`, `check_snapshot_order`), what survives a snapshot
(`entries_after_snapshot`), what `load()` hands out (`loaded_state`) and the snapshot's stats
(`StorageStats.note_snapshot`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from raftkv.core.messages import DurableState, Entry, HardState, Snapshot


class StorageError(Exception):
    """Base class of every storage failure."""


class CorruptWALError(StorageError):
    """A WAL record that is not a torn tail failed to decode; the message names file and offset."""


class CorruptSnapshotError(StorageError):
    """No usable snapshot: the files are damaged, or the WAL does not reach back to the one left."""


class DataDirLockedError(StorageError):
    """Another process (or another open storage in this one) owns the data directory."""


class StorageClosedError(StorageError):
    """The storage was used after close()."""


@dataclass(slots=True)
class StorageStats:
    """Counters a metrics layer reads; implementations update this object in place."""

    last_fsync_seconds: float = 0.0  # duration of the file fsync in the last sync()
    last_sync_records: int = 0  # WAL records made durable by the last sync()
    last_sync_bytes: int = 0  # bytes written by the last sync()
    fsyncs_total: int = 0  # every fsync issued (segments, directories, snapshot files)
    syncs_total: int = 0  # sync() calls that had something to write
    wal_bytes: int = 0  # bytes of all WAL segments on disk (or staged in memory)
    wal_segments: int = 0
    snapshot_bytes: int = 0  # size of the newest snapshot (file size on disk)
    snapshot_index: int = 0

    def note_snapshot(self, snapshot: Snapshot | None, nbytes: int) -> None:
        """The storage now holds `snapshot` (None: none), taking `nbytes` where it is kept."""
        self.snapshot_index = snapshot.meta.index if snapshot is not None else 0
        self.snapshot_bytes = nbytes


@runtime_checkable
class RaftStorage(Protocol):
    """What a Raft node needs from durable storage; see the module docstring for the contract."""

    @property
    def stats(self) -> StorageStats: ...

    def load(self) -> DurableState:
        """Hard state, snapshot and the entries contiguous after the snapshot index."""
        ...

    def append(self, entries: list[Entry]) -> None:
        """Stage entries; entries[0].index replaces the stored entry there and all after it."""
        ...

    def set_hard_state(self, hs: HardState) -> None:
        """Stage a new hard state; the last one staged before a sync wins."""
        ...

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """Durably install a snapshot and drop the log it covers (syncs staged writes too)."""
        ...

    def sync(self) -> None:
        """Make everything staged so far durable, with a single fsync."""
        ...

    def close(self) -> None:
        """Sync and release the storage; further use raises StorageClosedError."""
        ...


def check_append(entries: list[Entry], snapshot_index: int, last_index: int) -> None:
    """Reject appends the Raft core can never legitimately produce.

    Entries must be contiguous, must not reach into the snapshot, and must not leave a gap after
    the current last index (a gap would make the log non-contiguous on reload).
    """
    first = entries[0].index
    if entries[-1].index - first != len(entries) - 1:
        raise ValueError(f"entries are not contiguous: {first}..{entries[-1].index} in {len(entries)}")
    if first <= snapshot_index:
        raise ValueError(f"entry {first} is covered by the snapshot at {snapshot_index}")
    if first > last_index + 1:
        raise ValueError(f"entry {first} leaves a gap after the last index {last_index}")


def check_snapshot_order(snapshot: Snapshot, current_index: int) -> None:
    if snapshot.meta.index < current_index:
        raise ValueError(f"snapshot {snapshot.meta.index} is older than the current one at {current_index}")


def entries_after_snapshot(entries: list[Entry], index: int, term: int, term_before: int | None = None) -> list[Entry]:
    """What is left of a log once a snapshot at (index, term) stands in for its prefix.

    Paper section 7: "if an existing entry has the same index and term as the snapshot's last
    included entry, retain the entries following it; otherwise discard the entire log". A log that
    ends before the snapshot cannot hold that entry and is discarded too. `entries` are contiguous
    and begin at most one past the snapshot. When the snapshot's entry is the one just before them,
    `term_before` is its term as the log knows it (the current snapshot's term), or None when what
    precedes the entries is known to be that very snapshot (a WAL that begins right after it).
    """
    if not entries:
        return []
    at = index - entries[0].index  # where the snapshot's last entry sits; -1: just before the log
    assert at >= -1, f"entries begin at {entries[0].index}, leaving a gap after the snapshot at {index}"
    if at == -1:
        return entries[:] if term_before is None or term_before == term else []
    if at >= len(entries) or entries[at].term != term:
        return []
    return entries[at + 1 :]


def loaded_state(hard_state: HardState, snapshot: Snapshot | None, entries: list[Entry]) -> DurableState:
    """The DurableState `load()` hands out: the entries in a list of the caller's own (the storage
    keeps writing to its copy), checked to follow the snapshot with no gap (DurableState's rule)."""
    base = snapshot.meta.index if snapshot is not None else 0
    assert not entries or (entries[0].index == base + 1 and entries[-1].index == base + len(entries)), (
        f"entries {entries[0].index}..{entries[-1].index} ({len(entries)}) do not follow the snapshot at {base}"
    )
    return DurableState(hard_state=hard_state, snapshot=snapshot, entries=list(entries))
