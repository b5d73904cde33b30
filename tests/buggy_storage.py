"""Deliberately broken storage, each with one classic durability or recovery bug, to prove the tests bite.

A kill -9 keeps the page cache, so a storage that never fsyncs passes every crash test; these
variants are what tests/test_storage.py must still catch. Each is a function that patches one
seam of raftkv.storage for the length of a test (through pytest's monkeypatch), the way
tests/buggy_cores.py overrides one seam of the core. Nothing here is importable from the package.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from raftkv.storage import snapshots, wal


def fsync_is_a_no_op(mp: pytest.MonkeyPatch) -> None:
    """sync() writes the segment but its fdatasync returns without flushing anything."""
    mp.setattr(wal, "_datasync", lambda fd: None)


def wal_never_fsyncs_a_directory(mp: pytest.MonkeyPatch) -> None:
    """Segments (and the WAL's directories) are created and deleted without fsyncing their directory."""
    mp.setattr(wal, "fsync_dir", lambda path: None)


def snapshot_rename_not_fsynced(mp: pytest.MonkeyPatch) -> None:
    """A snapshot's tmp file is fsynced and renamed, but the rename is never made durable."""
    mp.setattr(snapshots, "fsync_dir", lambda path: None)


def torn_tail_never_cut(mp: pytest.MonkeyPatch) -> None:
    """Opening the WAL reports a torn tail but leaves it in place, so new records land after it."""
    real_replay = wal.replay
    mp.setattr(wal, "replay", lambda wal_dir, *, repair: real_replay(wal_dir, repair=False))


def skips_bad_records(mp: pytest.MonkeyPatch) -> None:
    """A record whose checksum fails but whose length fits the file is skipped on replay, not refused.

    A torn tail is still treated as one: the last record of the last segment, and anything
    running past the end of the file, go to the real scanner. Every other bad record is cut out
    of the bytes before the real scanner sees them.
    """
    real_scan = wal._scan

    def scan(path: Path, data: bytes, is_last: bool, rlog: wal._ReplayLog,
             size: int | None = None) -> tuple[int, int, int]:
        kept, off, n = bytearray(), 0, len(data)
        header = wal._FRAME.size
        while off + header <= n:
            length, crc = wal._FRAME.unpack_from(data, off)
            end = off + header + length
            if length == 0 or end > n or (is_last and end == n):
                break
            if off == 0 or zlib.crc32(data[off + header : end]) == crc:  # (a segment's length: left to the real one)
                kept += data[off:end]
            off = end
        kept += data[off:]
        removed = n - len(kept)  # (made up with zeros at the end: the segment keeps its length)
        valid, max_index, made = real_scan(path, bytes(kept) + bytes(removed), is_last, rlog, size)
        return valid + removed, max_index, made  # every byte cut out lay before `valid`

    mp.setattr(wal, "_scan", scan)


BUGS: dict[str, Callable[[pytest.MonkeyPatch], None]] = {
    "fsync-is-a-no-op": fsync_is_a_no_op,
    "wal-never-fsyncs-a-directory": wal_never_fsyncs_a_directory,
    "snapshot-rename-not-fsynced": snapshot_rename_not_fsynced,
    "torn-tail-never-cut": torn_tail_never_cut,
    "skips-bad-records": skips_bad_records,
}
