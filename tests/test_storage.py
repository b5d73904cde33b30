"""Storage: the RaftStorage contract on both implementations, then the disk's crash recovery.

Behavioural tests take the `backend` fixture and run against MemoryStorage and DiskStorage alike;
`reopen` is a clean close and open for both. Disk-only tests poke at the files: rotation,
compaction, torn tails, corruption (named by exact file and byte offset), the lock, snapshot
fallback, and a real kill -9. A kill -9 keeps the page cache, so fsyncs are checked against a
model of what a power cut would leave (PowerCutModel). The last section runs these tests against
the deliberately broken storage of tests/buggy_storage.py and requires each to fail.
"""

from __future__ import annotations

import inspect
import logging
import os
import random
import re
import signal
import stat
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from buggy_storage import BUGS

from raftkv.core.messages import ConfState, DurableState, Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from raftkv.storage import (
    CorruptSnapshotError,
    CorruptWALError,
    DataDirLockedError,
    DiskStorage,
    MemoryStorage,
    RaftStorage,
    StorageClosedError,
)
from raftkv.storage.base import entries_after_snapshot
from raftkv.storage.snapshots import SnapshotStore

REPO = Path(__file__).resolve().parents[1]
CONF = ConfState(("n1", "n2", "n3"), ("n4",))


def ents(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryKind.NORMAL, b"v%d-t%d" % (i, term)) for i in range(first, last + 1)]


def snap(index: int, term: int = 1, data: bytes | None = None) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, CONF), data if data is not None else b"image@%d" % index)


class Backend:
    def __init__(self, kind: str, tmp_path: Path) -> None:
        self.kind, self.dir = kind, tmp_path / "node"

    def open(self) -> RaftStorage:
        return MemoryStorage() if self.kind == "memory" else DiskStorage(self.dir, segment_bytes=8192)

    def reopen(self, s: RaftStorage) -> RaftStorage:
        s.close()
        if isinstance(s, MemoryStorage):
            s.crash()  # after a clean close nothing is unsynced: this is just "start again"
            return s
        return self.open()


@pytest.fixture(params=["memory", "disk"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return Backend(request.param, tmp_path)


# ---- the contract, on both implementations ---------------------------------------------------


def test_fresh_storage_is_empty(backend: Backend) -> None:
    s = backend.open()
    assert isinstance(s, RaftStorage)
    st = s.load()
    assert (st.hard_state, st.snapshot, st.entries) == (HardState(), None, [])


def test_round_trip_through_reopen(backend: Backend) -> None:
    s = backend.open()
    written = [*ents(1, 3), Entry(2, 4, EntryKind.NOOP), Entry(2, 5, EntryKind.CONF_CHANGE, b"add_voter:n4")]
    written.append(Entry(2, 6, EntryKind.NORMAL, bytes(range(256)) * 40))  # bigger than a page
    s.append(written)
    s.set_hard_state(HardState(2, "n2", 5))
    s.sync()
    assert s.load().entries == written
    s = backend.reopen(s)
    st = s.load()
    assert st.entries == written and st.hard_state == HardState(2, "n2", 5) and st.snapshot is None
    s.close()


@pytest.mark.parametrize("sync_between", [False, True])
def test_entry_at_i_replaces_i_and_everything_after(backend: Backend, sync_between: bool) -> None:
    s = backend.open()
    s.append(ents(1, 10, term=1))
    if sync_between:
        s.sync()
    s.append(ents(6, 8, term=2))  # a new leader overwrote 6..10 with a shorter suffix
    s.sync()
    expected = ents(1, 5, term=1) + ents(6, 8, term=2)
    assert s.load().entries == expected
    s = backend.reopen(s)
    assert s.load().entries == expected
    s.append(ents(9, 9, term=2))
    s = backend.reopen(s)
    assert s.load().entries == [*expected, *ents(9, 9, term=2)]
    s.close()


def test_last_hard_state_wins_and_survives(backend: Backend) -> None:
    s = backend.open()
    for hs in (HardState(1, None, 0), HardState(2, "n1", 0), HardState(3, None, 7)):
        s.set_hard_state(hs)
    s.sync()
    s = backend.reopen(s)
    assert s.load().hard_state == HardState(3, None, 7)
    s.close()


def test_snapshot_keeps_only_the_agreeing_tail(backend: Backend) -> None:
    s = backend.open()
    s.append(ents(1, 100))
    s.set_hard_state(HardState(1, "n1", 90))
    s.sync()
    s.save_snapshot(snap(60))
    for st in (s.load(), (s := backend.reopen(s)).load()):
        assert st.snapshot == snap(60)
        assert st.entries == ents(61, 100)
        assert st.hard_state == HardState(1, "n1", 90)
    s.append(ents(101, 102))
    s = backend.reopen(s)
    assert s.load().entries == ents(61, 102)
    assert s.stats.snapshot_index == 60
    s.close()


@pytest.mark.parametrize("snap_index, snap_term", [(8, 2), (50, 1)], ids=["conflicting", "ahead"])
def test_installed_snapshot_discards_a_log_that_disagrees(backend: Backend, snap_index: int, snap_term: int) -> None:
    """Paper section 7: if the log does not contain the snapshot's last entry, discard it all."""
    s = backend.open()
    s.append(ents(1, 10))
    s.sync()
    s.save_snapshot(snap(snap_index, snap_term))
    assert s.load().entries == []
    s.append(ents(snap_index + 1, snap_index + 3, term=2))
    s = backend.reopen(s)
    st = s.load()
    assert st.snapshot == snap(snap_index, snap_term)
    assert st.entries == ents(snap_index + 1, snap_index + 3, term=2)
    s.close()


def test_what_a_snapshot_leaves_of_a_log_is_one_rule_for_both() -> None:
    """Paper section 7, as both storages apply it (base.py): keep what follows the snapshot's last
    entry if the log holds that entry, else nothing."""
    log = ents(5, 9, term=2)
    assert entries_after_snapshot(log, 7, 2) == ents(8, 9, term=2)  # agrees: keep what follows
    assert entries_after_snapshot(log, 9, 2) == []  # covers it all
    assert entries_after_snapshot(log, 7, 3) == []  # disagrees: discard the entire log
    assert entries_after_snapshot(log, 12, 3) == []  # ahead of the log
    assert entries_after_snapshot(log, 4, 1) == log  # right before it: the snapshot the log follows
    assert entries_after_snapshot(log, 4, 1, term_before=1) == log
    assert entries_after_snapshot(log, 4, 3, term_before=1) == []  # same index, another term
    assert entries_after_snapshot([], 4, 1) == []


def test_impossible_appends_and_snapshots_are_refused(backend: Backend) -> None:
    s = backend.open()
    s.append(ents(1, 5))
    with pytest.raises(ValueError, match="gap"):
        s.append(ents(7, 8))
    with pytest.raises(ValueError, match="contiguous"):
        s.append([*ents(6, 6), *ents(8, 8)])
    s.save_snapshot(snap(4))
    with pytest.raises(ValueError, match="covered by the snapshot"):
        s.append(ents(3, 6))
    with pytest.raises(ValueError, match="older"):
        s.save_snapshot(snap(2))
    s.close()


def test_use_after_close_is_an_error(backend: Backend) -> None:
    s = backend.open()
    s.close()
    s.close()  # idempotent
    with pytest.raises(StorageClosedError):
        s.append(ents(1, 1))


def test_stats_describe_the_last_sync(backend: Backend) -> None:
    s = backend.open()
    before = s.stats.fsyncs_total
    s.append(ents(1, 10))
    s.set_hard_state(HardState(1, "n1", 10))
    s.sync()
    assert s.stats.last_sync_records == 11
    assert s.stats.last_sync_bytes > 10
    assert s.stats.fsyncs_total == before + 1  # group commit: one fsync for the whole batch
    s.sync()  # nothing staged: no fsync
    assert s.stats.fsyncs_total == before + 1
    s.close()


@pytest.mark.parametrize("seed", range(8))
def test_disk_matches_its_memory_twin_under_random_operations(tmp_path: Path, seed: int) -> None:
    """Seeded random appends, truncations, snapshots (agreeing, conflicting, ahead) and reopens."""
    rng = random.Random(seed)
    mem, disk = MemoryStorage(), DiskStorage(tmp_path, segment_bytes=4096)
    term, snap_index = 1, 0
    for step in range(300):
        last = mem.last_index()
        op = rng.random()
        if op < 0.55:
            if rng.random() < 0.1:
                term += 1  # a new leader; its entries may overwrite an uncommitted suffix
            first = rng.randint(max(snap_index + 1, last - 5), last + 1)
            batch = [Entry(term, i, EntryKind.NORMAL, rng.randbytes(rng.randint(0, 300))) for i in
                     range(first, first + rng.randint(1, 40))]  # fmt: skip
            for s in (mem, disk):
                s.append(batch)
        elif op < 0.7:
            hs = HardState(term, rng.choice([None, "n1", "n2"]), rng.randint(0, last))
            for s in (mem, disk):
                s.set_hard_state(hs)
        elif op < 0.85:
            for s in (mem, disk):
                s.sync()
        elif op < 0.95:
            st = mem.load()
            if rng.random() < 0.8 and st.entries:  # a local snapshot of an applied prefix
                e = rng.choice(st.entries)
                image = snap(e.index, e.term)
            else:  # installed from a leader: disagrees with the log or is ahead of it
                term += 1
                image = snap(last + rng.randint(0, 30), term)
            snap_index = image.meta.index
            for s in (mem, disk):
                s.save_snapshot(image)
        else:
            disk.close()
            disk = DiskStorage(tmp_path, segment_bytes=4096)
            mem.close()
            mem.crash()
        assert disk.load() == mem.load(), f"seed {seed} step {step}"
    disk.close()


# ---- the in-memory twin's crash model ---------------------------------------------------------


def test_memory_crash_loses_unsynced_writes_only() -> None:
    s = MemoryStorage()
    s.append(ents(1, 5))
    s.set_hard_state(HardState(1, "n1", 3))
    s.sync()
    s.append(ents(4, 8, term=2))  # truncates 4..5, never synced
    s.set_hard_state(HardState(2, "n2", 3))
    s.crash()
    st = s.load()
    assert st.entries == ents(1, 5) and st.hard_state == HardState(1, "n1", 3)


def test_memory_storage_can_start_from_a_given_disk() -> None:
    """How a simulator hands a server a made-up disk: it counts as synced, and its log must follow
    its snapshot as if it had been appended to it."""
    given = DurableState(HardState(3, "n2", 12), snap(10, 2), ents(11, 14, term=3))
    s = MemoryStorage(given)
    s.crash()
    assert s.load() == given and s.stats.snapshot_index == 10
    given.entries.clear()
    s.load().entries.clear()  # neither the given list nor a loaded one is the storage's own
    assert s.load().entries == ents(11, 14, term=3)
    s.append(ents(13, 15, term=4))
    s.sync()
    s.crash()
    assert s.load().entries == [*ents(11, 12, term=3), *ents(13, 15, term=4)]
    with pytest.raises(ValueError, match="gap"):
        MemoryStorage(DurableState(HardState(), snap(10), ents(12, 13)))
    with pytest.raises(ValueError, match="covered by the snapshot"):
        MemoryStorage(DurableState(HardState(), snap(10), ents(9, 13)))


def test_memory_lying_fsync_loses_acknowledged_writes() -> None:
    s = MemoryStorage(lying_fsync=True)
    s.append(ents(1, 3))
    s.sync()  # "succeeds"
    s.crash()
    assert s.load().entries == []
    s.append(ents(1, 2))
    s.sync()
    s.lying_fsync = False
    s.append(ents(3, 4))
    s.sync()  # a real flush persists everything still pending, in order
    s.crash()
    assert s.load().entries == ents(1, 4)


# ---- the disk: segments, compaction, recovery -------------------------------------------------


def segments(d: Path) -> list[Path]:
    return sorted((d / "wal").glob("*.wal"))


def test_segments_rotate_and_replay_in_order(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=4096)
    s.set_hard_state(HardState(1, "n1", 0))  # only ever written into the first segment
    for first in range(1, 2001, 50):
        s.append(ents(first, first + 49))
        s.sync()
    s.append(ents(1500, 1600, term=2))  # a truncation that reaches back across segments
    s.sync()
    expected = ents(1, 1499) + ents(1500, 1600, term=2)
    before = segments(tmp_path)
    assert len(before) > 10
    assert s.stats.wal_segments == len(segments(tmp_path))
    s.close()
    s = DiskStorage(tmp_path, segment_bytes=4096)
    assert s.load().entries == expected
    s.save_snapshot(snap(1550, 2))
    after = segments(tmp_path)
    assert len(after) < len(before) - 5 and after == before[-len(after) :], "oldest segments deleted"
    s.close()
    s = DiskStorage(tmp_path, segment_bytes=4096)
    st = s.load()
    assert st.snapshot == snap(1550, 2) and st.entries == ents(1551, 1600, term=2)
    assert st.hard_state == HardState(1, "n1", 0), "hard state outlives the segment it was written to"
    s.close()


def write_synced(d: Path, last: int) -> list[int]:
    """One sync per entry, into one segment; return the byte offset where each entry's record starts."""
    s = DiskStorage(d, segment_bytes=4096)
    offsets = []
    for i in range(1, last + 1):
        offsets.append(s.stats.wal_bytes)
        s.append(ents(i, i))
        s.sync()
    s.close()
    return offsets


def data_end(raw: bytes) -> int:
    """Where a segment's records end (by their framing); only zeros follow, to the segment's length."""
    off = 0
    while off + 8 <= len(raw) and (length := struct.unpack_from("<I", raw, off)[0]):
        off += 8 + length
    return off


def torn_at(seg: Path, start: int, kept: int) -> bytes:
    """What a crash mid-write leaves: the record at `start` written only up to `kept` bytes (the
    rest zeros, as the segment was made), the segment's length unchanged. Returns the bytes."""
    raw = bytearray(seg.read_bytes())
    end = data_end(raw)
    raw[start + kept : end] = bytes(end - start - kept)
    seg.write_bytes(raw)
    return bytes(raw)


def assert_cut_at(seg: Path, offset: int, length: int) -> None:
    raw = seg.read_bytes()
    assert raw[offset:].count(0) == len(raw) - offset, "cut exactly where the torn record starts"
    assert len(raw) == length, "the segment keeps its length"


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 9, -1])
def test_torn_last_record_is_cut_off_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture, cut: int) -> None:
    offsets = write_synced(tmp_path, 20)
    (seg,) = segments(tmp_path)
    end = data_end(seg.read_bytes())
    raw = torn_at(seg, offsets[-1], cut if cut > 0 else end - offsets[-1] + cut)
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 19)
    assert f"torn tail in {seg} at byte offset {offsets[-1]}," in caplog.text
    assert_cut_at(seg, offsets[-1], len(raw))
    s.append(ents(20, 21, term=2))
    s.close()
    s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 19) + ents(20, 21, term=2)
    s.close()


@pytest.mark.parametrize("damage", ["bad-crc", "bad-last-byte"])
def test_a_damaged_last_record_with_only_zeros_after_it_is_torn(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str) -> None:
    """Complete-looking but failing its checksum, with nothing but zeros after it: a write whose
    blocks did not all reach the disk."""
    offsets = write_synced(tmp_path, 10)
    (seg,) = segments(tmp_path)
    raw = bytearray(seg.read_bytes())
    raw[offsets[-1] + 4 if damage == "bad-crc" else data_end(raw) - 1] ^= 0xFF
    seg.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 9)
    assert f"torn tail in {seg} at byte offset {offsets[-1]}," in caplog.text
    assert_cut_at(seg, offsets[-1], len(raw))
    s.append(ents(s.last_index() + 1, 12))
    s.close()
    s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 12)
    s.close()


def test_zeros_after_the_last_record_are_the_rest_of_the_segment(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A segment is made its full length at once, a hole until written: zeros after the last
    record (a wholly zeroed last record too: a write that left nothing) are no damage."""
    offsets = write_synced(tmp_path, 10)
    (seg,) = segments(tmp_path)
    size = seg.stat().st_size
    assert size == 4096, "made its full length"
    DiskStorage(tmp_path / "big", segment_bytes=1 << 20).close()
    (big,) = segments(tmp_path / "big")
    assert big.stat().st_size == 1 << 20 and big.stat().st_blocks * 512 <= 64 * 1024, "a hole until written"
    torn_at(seg, offsets[-1], 0)
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 9)
    assert "torn" not in caplog.text
    s.close()
    assert seg.stat().st_size == size


@pytest.mark.parametrize("where", ["at-a-record", "inside-a-record", "after-the-records", "to-a-few-bytes"])
def test_a_segment_cut_short_is_corruption_at_its_end(tmp_path: Path, where: str) -> None:
    """A truncated file (a disk or a person cutting it, not a crash: a torn write never changes a
    segment's length) lost records that may have been acknowledged. Cut at a record's start it
    would look like a clean end, and inside one like a torn tail: the segment's recorded length
    tells it apart, and the open names the file and where it now ends."""
    offsets = write_synced(tmp_path, 30)
    (seg,) = segments(tmp_path)
    raw = seg.read_bytes()
    cut = {"at-a-record": offsets[15], "inside-a-record": offsets[15] + 5,
           "after-the-records": data_end(raw) + 100, "to-a-few-bytes": 40}[where]
    os.truncate(seg, cut)
    with pytest.raises(CorruptWALError, match=f"^{re.escape(str(seg))}: cut short at byte offset {cut}: ") as err:
        DiskStorage(tmp_path)
    assert "4096 bytes long" in str(err.value)
    assert seg.stat().st_size == cut, "nothing repaired"


def big(first: int, last: int) -> list[Entry]:
    return [Entry(1, i, EntryKind.NORMAL, b"%d:" % i + b"x" * 60_000) for i in range(first, last + 1)]


def flipped(seg: Path, clean: bytes, at: int) -> None:
    raw = bytearray(clean)
    raw[at] ^= 0x10
    seg.write_bytes(raw)


def test_large_segments_are_read_as_far_as_written_and_a_flipped_byte_anywhere_is_found(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1 MiB segments, a hole until written: an open reads each up to its first hole (the rest is
    known to be zeros). A byte flipped in an older segment, among its records or in the unwritten
    rest, stops the open naming where; in the live segment, past its records, it is torn bytes no
    record was acknowledged in, zeroed; among the live segment's records, it stops the open."""
    s = DiskStorage(tmp_path, segment_bytes=1 << 20)
    offsets = []
    for i in range(1, 31):
        offsets.append(s.stats.wal_bytes)
        s.append(big(i, i))
        s.sync()
    s.close()
    older, live = segments(tmp_path)
    assert live.stat().st_size == 1 << 20 and live.stat().st_blocks * 512 < live.stat().st_size, "a hole"
    s = DiskStorage(tmp_path)
    assert s.load().entries == big(1, 30)
    s.close()
    clean_older, clean_live = older.read_bytes(), live.read_bytes()
    older_end, live_records = data_end(clean_older), record_starts(clean_live)
    for seg, clean, at, error in (
            (older, clean_older, (1 << 20) - 10, f"damaged at byte offset {(1 << 20) - 10}: the records end at "
                                                 f"byte offset {older_end}"),
            (older, clean_older, older_end // 2, "fails its checksum"),
            (live, clean_live, live_records[5] + 1, f"record at byte offset {live_records[5]} fails its checksum")):
        flipped(seg, clean, at)
        with pytest.raises(CorruptWALError, match=f"^{re.escape(str(seg))}: .*{re.escape(error)}"):
            DiskStorage(tmp_path)
        seg.write_bytes(clean)
    flipped(live, clean_live, 900_000)  # far past the live segment's records
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    assert s.load().entries == big(1, 30)
    assert f"torn tail in {live} at byte offset {data_end(clean_live)}," in caplog.text
    s.close()
    assert live.read_bytes() == clean_live


def test_a_segment_written_before_segments_had_a_length_still_opens(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Data directories from before: a segment whose records start with the marker (no length
    record) and whose file ends at its last record. It opens, takes appends, and a torn tail is
    truncated as before."""
    offsets = write_synced(tmp_path, 10)
    (seg,) = segments(tmp_path)
    raw = seg.read_bytes()
    (first_length,) = struct.unpack_from("<I", raw, 0)
    header = 8 + first_length
    seg.write_bytes(raw[header : data_end(raw) - 2])  # no length record; the last record torn
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 9)
    assert f"torn tail in {seg} at byte offset {offsets[-1] - header}," in caplog.text
    assert seg.stat().st_size == offsets[-1] - header, "truncated where the torn record starts"
    s.append(ents(10, 12))
    s.close()
    s = DiskStorage(tmp_path)
    assert s.load().entries == ents(1, 12)
    s.close()


@pytest.mark.parametrize("left", [b"", b"\x0c\x00"], ids=["empty", "partial-header"])
def test_crash_while_creating_a_segment(tmp_path: Path, left: bytes) -> None:
    s = DiskStorage(tmp_path, segment_bytes=4096)
    for first in range(1, 301, 10):
        s.append(ents(first, first + 9))
        s.sync()
    s.close()
    last = segments(tmp_path)[-1]
    seq = int(last.name.split("-")[0], 16) + 1
    (tmp_path / "wal" / f"{seq:016x}-{301:016x}.wal").write_bytes(left)
    s = DiskStorage(tmp_path, segment_bytes=4096)
    assert segments(tmp_path)[-1] == last, "the stillborn segment is removed"
    s.append(ents(301, 310))
    s.close()
    s = DiskStorage(tmp_path, segment_bytes=4096)
    assert s.load().entries == ents(1, 310)
    s.close()


def record_starts(raw: bytes) -> list[int]:
    """Where each record of a segment starts, from the framing alone: u32 length, u32 crc, payload
    (a zero length: the rest of the segment, zeros)."""
    starts, off = [], 0
    while off < len(raw) and (length := struct.unpack_from("<I", raw, off)[0]):
        starts.append(off)
        off += 8 + length
    assert raw[off:].count(0) == len(raw) - off, "the segment ends inside a record"
    return starts


def fails_checksum(seg: Path, offset: int) -> str:
    """The error for the record at `offset` of `seg`, as a pattern: exactly that file and offset."""
    return f"^{re.escape(str(seg))}: record at byte offset {offset} fails its checksum "


def damage_record(raw: bytes, offset: int, in_payload: bool, in_length: bool = False) -> bytes:
    """Flip one bit of the record at `offset`: its crc field, its payload's last byte, or its
    length field (256 more: where it claims to end proves nothing, the records after it do)."""
    (length,) = struct.unpack_from("<I", raw, offset)
    damaged = bytearray(raw)
    damaged[offset + 1 if in_length else offset + 8 + length - 1 if in_payload else offset + 4] ^= 0x01
    return bytes(damaged)


def test_damage_to_any_record_is_corruption_at_its_exact_offset_unless_it_is_the_torn_last_one(
    tmp_path: Path,
) -> None:
    """Entries, hard states, a truncation and snapshot markers over several segments; each record
    damaged in turn must stop the open with CorruptWALError naming its segment and offset, so
    nothing after it is ever returned. Only the last record of the last segment is a torn tail:
    cut exactly where it starts, with the log before it intact."""
    s = DiskStorage(tmp_path, segment_bytes=4096)
    log = []
    for first in range(1, 101, 10):
        batch = [Entry(1, i, EntryKind.NORMAL, b"%d" % i * 40) for i in range(first, first + 10)]
        log[first - 1 :] = batch
        s.append(batch)
        s.set_hard_state(HardState(1, "n1", first))
        s.sync()
        if first == 31:
            s.save_snapshot(snap(5))  # a marker in a segment's middle; compacts nothing
    log[95:] = ents(96, 100, term=2)  # a truncation: replay must drop the term-1 suffix
    s.append(log[95:])
    s.sync()
    s.append(ents(101, 101, term=2))  # the last record of all
    s.close()
    segs = segments(tmp_path)
    assert len(segs) >= 3
    for seg in segs:
        raw = seg.read_bytes()
        starts = record_starts(raw)
        for k, offset in enumerate(starts):
            seg.write_bytes(damage_record(raw, offset, in_payload=k % 3 == 1, in_length=k % 3 == 2))
            if seg == segs[-1] and offset == starts[-1]:
                s = DiskStorage(tmp_path, segment_bytes=4096)
                assert s.load().entries == log[5:]  # everything before it, after the snapshot at 5
                assert_cut_at(seg, offset, len(raw))
                s.close()
            else:
                with pytest.raises(CorruptWALError, match=fails_checksum(seg, offset)) as err:
                    DiskStorage(tmp_path, segment_bytes=4096)
                assert type(err.value) is CorruptWALError
            seg.write_bytes(raw)


def test_a_record_damaged_while_running_stops_load_too(tmp_path: Path) -> None:
    """load() after writes reads the disk back without repairing it; damage found then is reported."""
    offsets = write_synced(tmp_path, 10)
    s = DiskStorage(tmp_path)
    (seg,) = segments(tmp_path)
    seg.write_bytes(damage_record(seg.read_bytes(), offsets[6], in_payload=True))  # bit rot under it
    s.append(ents(11, 12))
    with pytest.raises(CorruptWALError, match=fails_checksum(seg, offsets[6])):
        s.load()
    s.close()


def test_damaged_record_before_the_tail_is_corruption(tmp_path: Path) -> None:
    offsets = write_synced(tmp_path, 10)
    (seg,) = segments(tmp_path)
    raw = bytearray(seg.read_bytes())
    raw[offsets[4] + 12] ^= 0x01  # inside entry 5's payload; entries 6..10 follow
    seg.write_bytes(raw)
    with pytest.raises(CorruptWALError, match=fails_checksum(seg, offsets[4])) as err:
        DiskStorage(tmp_path)
    assert type(err.value) is CorruptWALError
    DiskStorage(tmp_path / "other").close()  # the failed open released its lock...
    with pytest.raises(CorruptWALError):
        DiskStorage(tmp_path)  # ...and did not "repair" anything: still refused


def test_damage_in_an_older_segment_is_corruption_even_at_its_end(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=4096)
    for first in range(1, 501, 10):
        s.append(ents(first, first + 9))
        s.sync()
    s.close()
    older = segments(tmp_path)[1]
    raw = older.read_bytes()
    last_record = record_starts(raw)[-1]
    torn_at(older, last_record, data_end(raw) - last_record - 3)  # as a torn write would look
    with pytest.raises(CorruptWALError, match=fails_checksum(older, last_record)):
        DiskStorage(tmp_path, segment_bytes=4096)
    older.write_bytes(raw[:-3])  # cut short, even by zeros only
    with pytest.raises(CorruptWALError, match=re.escape(f"{older}: cut short at byte offset {len(raw) - 3}: ")):
        DiskStorage(tmp_path, segment_bytes=4096)


def test_missing_segment_is_corruption(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=4096)
    for first in range(1, 501, 10):
        s.append(ents(first, first + 9))
        s.sync()
    s.close()
    assert len(segments(tmp_path)) >= 3
    segments(tmp_path)[1].unlink()
    with pytest.raises(CorruptWALError, match="missing"):
        DiskStorage(tmp_path)


def test_data_dir_lock_names_the_dir_and_pid(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    with pytest.raises(DataDirLockedError) as err:
        DiskStorage(tmp_path)
    assert str(tmp_path) in str(err.value) and str(os.getpid()) in str(err.value)
    s.close()
    DiskStorage(tmp_path).close()


def test_only_the_newest_two_snapshots_are_kept(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append(ents(1, 40))
    for i in (10, 20, 30):
        s.save_snapshot(snap(i))
    names = sorted(p.name for p in (tmp_path / "snap").iterdir())
    assert names == [f"{1:016x}-{20:016x}.snap", f"{1:016x}-{30:016x}.snap"]
    s.close()


def test_corrupt_newest_snapshot_falls_back_while_the_wal_covers_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = DiskStorage(tmp_path)  # one big segment: nothing is compacted away
    s.append(ents(1, 40))
    s.save_snapshot(snap(10))
    s.save_snapshot(snap(30))
    s.close()
    newest = SnapshotStore(tmp_path / "snap").paths_newest_first()[0]
    raw = bytearray(newest.read_bytes())
    raw[-1] ^= 0xFF
    newest.write_bytes(raw)
    with caplog.at_level(logging.WARNING, logger="raftkv.storage"):
        s = DiskStorage(tmp_path)
    st = s.load()
    assert st.snapshot == snap(10) and st.entries == ents(11, 40)
    assert str(newest) in caplog.text
    s.close()


def test_corrupt_newest_snapshot_without_wal_cover_is_a_clear_error(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path, segment_bytes=4096)
    for first in range(1, 401, 10):
        s.append(ents(first, first + 9))
        s.sync()
    s.save_snapshot(snap(100))
    s.save_snapshot(snap(390))  # compacts segments 101..390 away
    s.close()
    newest = SnapshotStore(tmp_path / "snap").paths_newest_first()[0]
    newest.write_bytes(newest.read_bytes()[:-5])
    with pytest.raises(CorruptSnapshotError, match="nowhere") as err:
        DiskStorage(tmp_path)
    assert str(newest) in str(err.value)


def test_crash_between_snapshot_file_and_wal_marker(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append(ents(1, 10))
    s.close()
    SnapshotStore(tmp_path / "snap").save(snap(50))  # as if save_snapshot died after step 1
    s = DiskStorage(tmp_path)
    st = s.load()
    assert st.snapshot == snap(50) and st.entries == []
    s.append(ents(51, 53))  # would look like a gap after 10 unless the marker was repaired
    s.close()
    s = DiskStorage(tmp_path)
    assert s.load().entries == ents(51, 53)
    s.close()


def test_interrupted_snapshot_write_leaves_no_trace(tmp_path: Path) -> None:
    s = DiskStorage(tmp_path)
    s.append(ents(1, 5))
    s.save_snapshot(snap(3))
    s.close()
    (tmp_path / "snap" / "half-written.snap.tmp").write_bytes(b"RKVSNAP1\x00")
    s = DiskStorage(tmp_path)
    assert s.load().snapshot == snap(3)
    assert not list((tmp_path / "snap").glob("*.tmp"))
    s.close()


# ---- a power cut: what the fsyncs made durable ------------------------------------------------


class PowerCutModel:
    """What a power cut would leave on disk, learnt from the fsyncs the storage makes.

    It wraps os.fsync and os.fdatasync and, at each call, records what the call made durable:
    for a file its size and a checksum of its bytes, for a directory the names it held.
    Both are keyed by inode, so a rename keeps them, and an unlink forgets its inode (ext4 hands
    freed inodes out again). Whatever is on disk when the model starts, or when the test calls
    `assume_durable` after planting files, counts as durable, as after a clean shutdown.
    """

    # Rewritten by every open (flock and pid), never read back after a crash.
    IGNORED = frozenset({"LOCK"})

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.synced_size: dict[tuple[int, int], tuple[int, int]] = {}  # (size, crc32 of the bytes)
        self.synced_names: dict[tuple[int, int], set[str]] = {}
        self.assume_durable()
        for name in ("fsync", "fdatasync"):
            monkeypatch.setattr(os, name, self._noting(getattr(os, name)))
        monkeypatch.setattr(os, "unlink", self._forgetting(os.unlink))

    def assume_durable(self) -> None:
        for path in [self.root, *self.root.rglob("*")]:
            self._note(path)

    def assert_nothing_lost(self, after: str) -> None:
        lost = self.unsynced()
        assert not lost, f"a power cut right after {after} would undo:\n" + "\n".join(lost)

    def unsynced(self) -> list[str]:
        """Everything a power cut now would undo, one line each; empty when all is durable."""
        lost = []
        for d in [self.root, *(p for p in self.root.rglob("*") if p.is_dir())]:
            names = set(os.listdir(d)) - self.IGNORED
            synced = self.synced_names.get(self._key(os.stat(d)), set()) - self.IGNORED
            rel = d.relative_to(self.root)
            lost += [f"{rel / n}: new name, {rel} not fsynced since" for n in sorted(names - synced)]
            lost += [f"{rel / n}: deleted, {rel} not fsynced since" for n in sorted(synced - names)]
        for f in self.root.rglob("*"):
            st = f.stat()
            if f.name in self.IGNORED or not stat.S_ISREG(st.st_mode):
                continue
            synced = self.synced_size.get(self._key(st))
            if synced != (st.st_size, zlib.crc32(f.read_bytes())):
                covered = "nothing" if synced is None else f"{synced[0]} bytes, not all as they are now"
                lost.append(f"{f.relative_to(self.root)}: {st.st_size} bytes, its last fsync covered {covered}")
        return lost

    @staticmethod
    def _key(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def _note(self, where: Path | int) -> None:
        st = os.stat(where)
        if stat.S_ISDIR(st.st_mode):
            self.synced_names[self._key(st)] = set(os.listdir(where))
        else:  # (a descriptor the WAL writes through is write-only: read the file itself)
            path = Path(f"/proc/self/fd/{where}") if isinstance(where, int) else where
            self.synced_size[self._key(st)] = (st.st_size, zlib.crc32(path.read_bytes()))

    def _noting(self, real_sync: Callable[[int], None]) -> Callable[[int], None]:
        def sync(fd: int) -> None:
            real_sync(fd)
            self._note(fd)

        return sync

    def _forgetting(self, real_unlink: Callable[..., None]) -> Callable[..., None]:
        def unlink(path: Path | str, *args: object, **kwargs: object) -> None:
            st = os.stat(path, dir_fd=kwargs.get("dir_fd"), follow_symlinks=False)  # type: ignore[arg-type]
            real_unlink(path, *args, **kwargs)
            self.synced_size.pop(self._key(st), None)

        return unlink


def test_every_sync_reaches_the_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After sync() or save_snapshot() returns a power cut loses nothing: every byte written was
    fsynced on its own file, and every segment, snapshot or directory created, renamed or deleted
    had its directory fsynced too; the same after recovery cut a torn tail or removed leftovers."""
    d = tmp_path / "data" / "node"
    disk = PowerCutModel(tmp_path, monkeypatch)
    s = DiskStorage(d, segment_bytes=4096)
    disk.assert_nothing_lost("creating a data directory")
    for first in range(1, 601, 20):
        s.append(ents(first, first + 19))
        s.set_hard_state(HardState(1, "n1", first))
        s.sync()
        disk.assert_nothing_lost(f"the sync of {first}..{first + 19}")
        if first % 200 == 181:
            s.save_snapshot(snap(first))  # compacts segments and, from the third on, prunes snapshots
            disk.assert_nothing_lost(f"the snapshot at {first}")
    s.close()
    live = segments(d)[-1]
    assert int(live.name.split("-")[0], 16) >= 3, "segments rotated"

    raw = live.read_bytes()
    torn_at(live, record_starts(raw)[-1], data_end(raw) - record_starts(raw)[-1] - 3)  # a power cut mid-write
    (d / "snap" / "half-written.snap.tmp").write_bytes(b"RKVSNAP1")
    disk.assume_durable()
    DiskStorage(d, segment_bytes=4096).close()
    disk.assert_nothing_lost("cutting a torn tail and removing a half-written snapshot")

    seq = int(live.name.split("-")[0], 16) + 1
    (d / "wal" / f"{seq:016x}-{601:016x}.wal").write_bytes(b"")  # a crash while creating a segment
    disk.assume_durable()
    DiskStorage(d, segment_bytes=4096).close()
    disk.assert_nothing_lost("removing a stillborn segment")


# ---- a real crash -----------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from raftkv.core.messages import ConfState, Entry, HardState, Snapshot, SnapshotMeta
    from raftkv.storage import DiskStorage

    s = DiskStorage(sys.argv[1], segment_bytes=16384)
    st = s.load()
    nxt = (st.entries[-1].index if st.entries else (st.snapshot.meta.index if st.snapshot else 0)) + 1
    if sys.argv[2] == "unsynced":
        s.append([Entry(1, i, data=b"%d" % i) for i in range(nxt, nxt + 10)])
        s.sync()
        s.append([Entry(1, i, data=b"%d" % i) for i in range(nxt + 10, nxt + 20)])
        s.set_hard_state(HardState(9, "n9", 9))
        print("staged", nxt + 9, flush=True)
        sys.stdin.read()
    n = 0
    while True:
        n += 1
        k = 1 + n % 37
        s.append([Entry(1, i, data=b"%d" % i) for i in range(nxt, nxt + k)])
        nxt += k
        s.set_hard_state(HardState(1, "n1", nxt - 1))
        s.sync()
        print(nxt - 1, flush=True)
        if n % 97 == 0:
            s.save_snapshot(Snapshot(SnapshotMeta(nxt - 20, 1, ConfState(("n1",))), b"%d" % (nxt - 20)))
    """
)


def run_child(d: Path, mode: str, lines: int) -> list[int]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(d), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    reported = []
    assert p.stdout is not None
    try:
        while len(reported) < lines:
            line = p.stdout.readline()
            assert line, f"child exited early with {p.wait()}"
            reported.append(int(line.split()[-1]))
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return reported


def check_durable(d: Path, last_synced: int) -> None:
    s = DiskStorage(d, segment_bytes=16384)
    st = s.load()
    s.close()
    base = st.snapshot.meta.index if st.snapshot else 0
    if st.snapshot:
        assert st.snapshot.data == b"%d" % base
    assert [e.index for e in st.entries] == list(range(base + 1, base + 1 + len(st.entries)))
    assert all(e.data == b"%d" % e.index for e in st.entries)
    assert (st.entries[-1].index if st.entries else base) >= last_synced
    assert st.hard_state.commit >= last_synced


def test_kill_9_never_loses_a_synced_entry(tmp_path: Path) -> None:
    for round_ in range(4):  # each round resumes from what the previous kill left
        reported = run_child(tmp_path, "loop", lines=200 + 100 * round_)
        check_durable(tmp_path, reported[-1])


def test_kill_9_loses_what_was_staged_but_not_synced(tmp_path: Path) -> None:
    (synced,) = run_child(tmp_path, "unsynced", lines=1)
    s = DiskStorage(tmp_path)
    st = s.load()
    assert st.entries[-1].index == synced and st.hard_state == HardState()
    s.close()


# ---- the tests bite: each broken storage fails at least one of them ---------------------------

# (bug in tests/buggy_storage.py, a test above that must fail on it, its parameters, what the failure says)
CATCHES: list[tuple[str, Callable[..., None], dict[str, object], str]] = [
    ("fsync-is-a-no-op", test_every_sync_reaches_the_disk, {}, r"\.wal: \d+ bytes, its last fsync covered"),
    ("wal-never-fsyncs-a-directory", test_every_sync_reaches_the_disk, {}, r"\.wal: new name, data/node/wal not"),
    ("snapshot-rename-not-fsynced", test_every_sync_reaches_the_disk, {}, r"\.snap: new name, data/node/snap not"),
    ("torn-tail-never-cut", test_torn_last_record_is_cut_off_with_a_warning, {"cut": 4}, "cut exactly where"),
    ("torn-tail-never-cut", test_a_damaged_last_record_with_only_zeros_after_it_is_torn, {"damage": "bad-crc"},
     "cut exactly where"),
    (
        "skips-bad-records",
        test_damage_to_any_record_is_corruption_at_its_exact_offset_unless_it_is_the_torn_last_one,
        {},
        "DID NOT RAISE",
    ),
    ("skips-bad-records", test_damaged_record_before_the_tail_is_corruption, {}, "Regex pattern did not match"),
    ("skips-bad-records", test_a_record_damaged_while_running_stops_load_too, {}, "Regex pattern did not match"),
]


@pytest.mark.parametrize(
    ("bug", "test", "params", "failure"), [pytest.param(*c, id=f"{c[0]}:{c[1].__name__}") for c in CATCHES]
)
def test_a_broken_storage_fails_the_test(
    bug: str,
    test: Callable[..., None],
    params: dict[str, object],
    failure: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    BUGS[bug](monkeypatch)
    given = {"tmp_path": tmp_path, "monkeypatch": monkeypatch, "caplog": caplog, **params}
    # A failed assert, or pytest.raises finding no error: the test failed, not crashed.
    with pytest.raises((AssertionError, pytest.fail.Exception), match=failure):
        test(**{name: given[name] for name in inspect.signature(test).parameters})


def test_every_broken_storage_is_caught() -> None:
    assert {bug for bug, *_ in CATCHES} == set(BUGS)
