"""DiskStorage: RaftStorage over a segmented WAL (wal.py) and snapshot files (snapshots.py).

Theory of operation
-------------------
Layout of a data directory:

    data_dir/LOCK    flock()ed for as long as the storage is open; holds the owner's pid
    data_dir/wal/    segments, see wal.py
    data_dir/snap/   snapshot files, see snapshots.py

Writes go to the WAL buffer; `sync` is the WAL's single write + fdatasync. In memory the storage
keeps only what it needs to validate appends and to apply the snapshot rule: the last index and
the log's terms as *runs* (Raft terms never decrease along a log, so a run list is tiny).
The full log is read back from disk by `load()`; the Raft core holds its own copy while running.

`save_snapshot` orders its steps so that a crash between any two of them recovers:
  1. write the snapshot file (tmp, fsync, rename, fsync dir);
  2. stage a snapshot marker and the current hard state in the WAL and sync;
  3. delete WAL segments the snapshot covers entirely, then snapshot files beyond the newest two.
A crash after 1 leaves a snapshot newer than the WAL's marker: recovery applies the same
section 7 rule the marker would have, and writes the missing marker before accepting appends.

Not thread-safe: one caller at a time (the node's driver). Running sync() in an executor
thread is fine as long as nothing else touches the storage until it returns.

Recovery (`_recover`) replays the WAL, picks the newest snapshot file that reads back intact
(warning about and skipping damaged ones), and reconciles the two: entries the snapshot covers
are dropped; a log that disagrees with the snapshot at its index is dropped; and if the WAL
begins after the chosen snapshot (its older entries were compacted away because a newer,
now-unreadable snapshot covered them) there is no consistent state to offer, so it raises
CorruptSnapshotError rather than start with a hole in the log.
"""

from __future__ import annotations

import fcntl
import logging
import os
from bisect import bisect_left
from pathlib import Path

from raftkv.core.messages import DurableState, Entry, HardState, Snapshot
from raftkv.storage.base import (
    CorruptSnapshotError,
    DataDirLockedError,
    StorageClosedError,
    StorageStats,
    check_append,
    check_snapshot_order,
    entries_after_snapshot,
    loaded_state,
)
from raftkv.storage.snapshots import SnapshotStore
from raftkv.storage.wal import DEFAULT_SEGMENT_BYTES, WAL, Replay, create_dirs_durably, replay

log = logging.getLogger("raftkv.storage")


def _lock_data_dir(data_dir: Path) -> int:
    path = data_dir / "LOCK"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        mine = " (this process)" if holder == str(os.getpid()) else ""
        raise DataDirLockedError(
            f"data directory {data_dir} is in use by another raftkv storage, "
            f"pid {holder}{mine}; stop it or choose another --data-dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _reconcile(snapshot: Snapshot | None, rep: Replay) -> list[Entry]:
    """The entries that follow `snapshot` according to the replayed WAL (see module docstring)."""
    s, t = (snapshot.meta.index, snapshot.meta.term) if snapshot else (0, 0)
    ents = rep.entries
    if not ents:
        if rep.prev_index > s:
            raise CorruptSnapshotError(
                f"the WAL records a snapshot at index {rep.prev_index} but the newest readable snapshot is at {s}"
            )
        return []
    first = ents[0].index
    if first - 1 > s:
        raise CorruptSnapshotError(
            f"the WAL begins at index {first} but the newest readable snapshot "
            f"is at {s}: entries {s + 1}..{first - 1} are nowhere"
        )
    return entries_after_snapshot(ents, s, t)  # [] if the snapshot replaced (or is past) the whole log


class DiskStorage:
    """Durable RaftStorage in `data_dir`; open it once per process (the dir is locked)."""

    def __init__(self, data_dir: Path | str, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES) -> None:
        self.data_dir = Path(data_dir)
        create_dirs_durably(self.data_dir)
        self._lock_fd = _lock_data_dir(self.data_dir)
        self._closed = False
        self._stats = StorageStats()
        wal = None
        try:
            self._snaps = SnapshotStore(self.data_dir / "snap")
            wal = WAL(self.data_dir / "wal", segment_bytes=segment_bytes, stats=self._stats)
            rep, wal.recovered = wal.recovered, None
            assert rep is not None
            state = self._recover(rep)
        except BaseException:
            if wal is not None:
                wal.close()
            self._release_lock()
            raise
        self._wal = wal
        self._loaded: DurableState | None = state
        self._hs = state.hard_state
        snap = state.snapshot
        self._snap_index, self._snap_term = (snap.meta.index, snap.meta.term) if snap else (0, 0)
        self._last = state.entries[-1].index if state.entries else self._snap_index
        self._run_starts: list[int] = []  # term runs: entries from _run_starts[k] have _run_terms[k]
        self._run_terms: list[int] = []
        self._extend_runs(state.entries)
        if self._snap_index > rep.marker[0]:
            # Crashed between writing the snapshot file and its WAL marker: write it now, so
            # appends after the snapshot cannot look like a gap on the next replay.
            self._wal.mark_snapshot(self._snap_index, self._snap_term)
            self._wal.set_hard_state(self._hs)
            self._wal.sync()

    # ---- RaftStorage --------------------------------------------------------------------------

    @property
    def stats(self) -> StorageStats:
        return self._stats

    def load(self) -> DurableState:
        self._check_open()
        if self._loaded is None:  # written to since open: sync and read the disk back
            self._wal.sync()
            self._loaded = self._recover(replay(self._wal.dir, repair=False))
        st = self._loaded
        return loaded_state(st.hard_state, st.snapshot, st.entries)

    def append(self, entries: list[Entry]) -> None:
        self._check_open()
        if not entries:
            return
        check_append(entries, self._snap_index, self._last)
        self._loaded = None
        self._truncate_runs(entries[0].index)
        # Raft terms never decrease along a log; the term runs (and _extend_runs' shortcut) rely on it.
        prev_term = self._run_terms[-1] if self._run_terms else self._snap_term
        assert prev_term <= entries[0].term <= entries[-1].term, (
            f"terms decrease along the log: {prev_term} before {entries[0].term}..{entries[-1].term}"
        )
        self._extend_runs(entries)
        self._last = entries[-1].index
        self._wal.append(entries)

    def set_hard_state(self, hs: HardState) -> None:
        self._check_open()
        self._loaded = None
        self._hs = hs
        self._wal.set_hard_state(hs)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        self._check_open()
        check_snapshot_order(snapshot, self._snap_index)
        index, term = snapshot.meta.index, snapshot.meta.term
        self._loaded = None
        path = self._snaps.save(snapshot)  # step 1: the file, durable
        self._stats.fsyncs_total += 2
        if self._term_at(index) == term:  # paper section 7: keep the log after it if it agrees
            k = bisect_left(self._run_starts, index + 1)
            if k == len(self._run_starts) or self._run_starts[k] != index + 1:
                k -= 1  # the run holding index + 1 began earlier; it now begins at index + 1
            del self._run_starts[:k], self._run_terms[:k]
            if self._run_starts:
                self._run_starts[0] = index + 1
            self._last = max(self._last, index)
        else:
            self._run_starts.clear()
            self._run_terms.clear()
            self._last = index
        if self._last == index:
            self._run_starts.clear()
            self._run_terms.clear()
        assert self._last >= index and (not self._run_starts or self._run_starts[0] == index + 1), (
            f"term runs {self._run_starts[:1]} must start right after the snapshot at {index}"
        )
        self._snap_index, self._snap_term = index, term
        self._wal.mark_snapshot(index, term)  # step 2: marker + hard state, synced
        self._wal.set_hard_state(self._hs)
        self._wal.sync()
        self._wal.compact(index)  # step 3: reclaim space
        if self._snaps.prune():
            self._stats.fsyncs_total += 1
        self._stats.note_snapshot(snapshot, path.stat().st_size)

    def sync(self) -> None:
        self._check_open()
        self._wal.sync()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._wal.close()
        finally:
            self._closed = True
            self._release_lock()

    def __enter__(self) -> DiskStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def last_index(self) -> int:
        """Index of the last entry written (synced or not), or the snapshot's if the log is empty."""
        return self._last

    # ---- internals ----------------------------------------------------------------------------

    def _recover(self, rep: Replay) -> DurableState:
        skipped: list[str] = []
        snapshot, nbytes = None, 0
        for path in self._snaps.paths_newest_first():
            try:
                snapshot = self._snaps.read(path)
                nbytes = path.stat().st_size
                break
            except CorruptSnapshotError as exc:
                log.warning("snapshot: skipping unreadable %s: %s", path, exc, extra={"file": str(path)})
                skipped.append(str(exc))
        try:
            entries = _reconcile(snapshot, rep)
        except CorruptSnapshotError as exc:
            detail = f"; skipped damaged snapshots: {skipped}" if skipped else ""
            raise CorruptSnapshotError(f"{self.data_dir}: cannot recover: {exc}{detail}") from None
        if skipped:
            log.warning(
                "snapshot: fell back to %s, the WAL still covers it",
                f"index {snapshot.meta.index}" if snapshot else "no snapshot",
            )
        self._stats.note_snapshot(snapshot, nbytes)
        return DurableState(hard_state=rep.hard_state, snapshot=snapshot, entries=entries)

    def _term_at(self, index: int) -> int | None:
        if index == self._snap_index:
            return self._snap_term
        if not self._run_starts or index < self._run_starts[0] or index > self._last:
            return None
        return self._run_terms[bisect_left(self._run_starts, index + 1) - 1]

    def _truncate_runs(self, index: int) -> None:
        """Forget the terms of entries >= index (Raft truncation)."""
        k = bisect_left(self._run_starts, index)
        del self._run_starts[k:], self._run_terms[k:]

    def _extend_runs(self, entries: list[Entry]) -> None:
        starts, terms = self._run_starts, self._run_terms
        if terms and terms[-1] == entries[-1].term:
            return  # terms never decrease along a log: the whole batch continues the last run
        for e in entries:
            if not terms or terms[-1] != e.term:
                starts.append(e.index)
                terms.append(e.term)

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError(f"DiskStorage {self.data_dir} is closed")
