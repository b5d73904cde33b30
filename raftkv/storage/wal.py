"""The write-ahead log: segmented, append-only, checksummed, with group commit.

Theory of operation
-------------------
The WAL is a directory of *segments* named `<seq>-<first_index>.wal` (16 hex digits each).
`seq` grows by one per segment and orders replay; `first_index` is the index the segment's first
entry was expected to have, a hint for people (replay never relies on it). A segment is a run
of records framed as

    length: u32 LE | crc32(payload): u32 LE | payload: msgpack tuple

with four payloads: `(0, term, index, kind, data)` an entry, `(1, term, voted_for, commit)` the
hard state, `(2, index, term)` a snapshot marker, `(3, length)` the length the segment was made
(its first record). Nothing is ever rewritten in place: replay
reads every segment in order and an entry record with index i *logically* truncates everything
>= i replayed so far, which is how Raft's suffix truncation stays append-only. A marker applies
the paper's section 7 rule to what was replayed (keep the log if it agrees at the marker, else
drop it), so an installed snapshot that replaced a conflicting log replays the same way.

Every segment is made `segment_bytes` long at once (a sparse file: no blocks are allocated until
written, and replay reads it only as far as it was written) and opens with a header: its length,
then the marker and hard state current when it was created, so a segment stands on its own: once
a snapshot covers every entry of the oldest segments they can be deleted without losing the hard
state or where the log starts (DiskStorage also re-writes both into the live segment before
compacting).

Group commit: `append`, `set_hard_state` and `mark_snapshot` only encode into an in-memory
buffer; `sync` hands the whole buffer to one write() and one fdatasync(). Rotation happens
inside sync, before the write, once the live segment would exceed `segment_bytes`; a new
segment's header carries the state as of the data already on disk (not the buffered state),
so a torn write can never leave a hard state that is ahead of the entries it describes.

Records are written from the start of a segment on; after the last one there are only zeros.
Recovery distinguishes a *torn tail* from *corruption*. A crash mid-write can leave the last
record of the last segment incomplete, or complete-looking but failing its checksum, with no
whole record after it (only zeros, or the rest of what that write did not finish). That record
was never acknowledged, so it is cut off with a warning (zeroed; in a segment from before
segments had a length, the file is truncated). Any other bad record (one followed by a whole
record, or in an older segment, which was fully synced before the next segment was created), and
any nonzero byte after the records of an older segment, is corruption of acknowledged data and
raises CorruptWALError naming the file and byte offset; skipping it would silently drop
committed entries. Whether whole records follow a bad one is searched for, not read from its
length field: a flipped bit there would make it claim to end anywhere. A segment shorter than the
length it was made is corruption too: a file cut short (a truncation, not a torn write, which
never changes the length) lost records that may have been acknowledged, and without the length
recorded it would look like a clean end or a torn tail.

After any write or fsync error the WAL refuses further use: after a failed fsync the page cache
may already have dropped the dirty pages, so retrying could report success for lost data.

Durability of names: a new file's (or directory's) entry lives in its parent directory, which
has to be fsynced too, or a power cut can lose a whole fsynced segment. The WAL fsyncs its
directory after creating or deleting a segment, and `create_dirs_durably` does the same for
every directory it creates.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from raftkv.core.messages import Entry, EntryKind, HardState
from raftkv.storage.base import CorruptWALError, StorageClosedError, StorageError, StorageStats

log = logging.getLogger("raftkv.storage")

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
REC_ENTRY, REC_HARD_STATE, REC_SNAPSHOT, REC_LENGTH = 0, 1, 2, 3
ZERO_CHUNK = 1 << 20  # zeros are checked and written this much at a time
_FRAME = struct.Struct("<II")  # payload length, crc32 of payload
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_KINDS = {k.value: k for k in EntryKind}


def _datasync(fd: int) -> None:
    """fdatasync flushes the data and the metadata needed to read it back (the file size); that
    is all an append-only file needs, and it skips the mtime journal write fsync would add."""
    getattr(os, "fdatasync", os.fsync)(fd)  # macOS has no fdatasync


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def fsync_dir(path: Path) -> None:
    """Make a create, rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_dirs_durably(path: Path) -> None:
    """mkdir -p, with each directory it creates fsynced into its parent (see the module docstring)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
        fsync_dir(d.parent)


@dataclass(slots=True)
class Segment:
    path: Path
    seq: int
    first_index: int
    max_index: int  # highest entry index written to it (0 if none); decides compaction
    size: int


@dataclass(slots=True)
class Replay:
    """What replaying the segments produced, before reconciling it with the snapshot files."""

    entries: list[Entry] = field(default_factory=list)
    prev_index: int = 0  # the index just before entries[0] (or where the next entry must go)
    marker: tuple[int, int] = (0, 0)  # the newest snapshot marker (index, term)
    hard_state: HardState = field(default_factory=HardState)
    segments: list[Segment] = field(default_factory=list)


class _ReplayLog:
    """Applies records in WAL order with the same rules the writer side followed."""

    def __init__(self) -> None:
        self.entries: list[Entry] = []
        # None: the log may start at any index, since older segments may have been compacted
        # away. Fixed after a marker that dropped the log: the next entry must follow it.
        self.prev: int | None = None
        self.fixed = False
        self.marker = (0, 0)
        self.hard_state = HardState()

    def entry(self, e: Entry, path: Path, offset: int) -> None:
        ents, i = self.entries, e.index
        first = ents[0].index if ents else i if self.prev is None or not self.fixed else self.prev + 1
        if first <= i <= first + len(ents):
            del ents[i - first :]  # Raft truncation: i replaces i and everything after it
            ents.append(e)
        elif i < first and not self.fixed:
            # Truncation below the oldest surviving entry: what preceded it was compacted away.
            ents[:] = [e]
        else:
            last = first + len(ents) - 1
            raise CorruptWALError(
                f"{path}: entry {i} at byte offset {offset} does not continue the log {first}..{last}"
            )
        self.prev = ents[0].index - 1

    def snapshot_marker(self, index: int, term: int) -> None:
        self.marker = (index, term)
        ents = self.entries
        if not ents:
            if self.fixed and index > self.prev:  # type: ignore[operator]
                self.prev = index
            return
        first = ents[0].index
        if index < first:
            return  # the log already starts after it
        if index < first + len(ents) and ents[index - first].term == term:
            return  # agrees: keep it all, so an older snapshot can still be fallen back on
        ents.clear()
        self.prev = index
        self.fixed = True


def _list_segments(wal_dir: Path) -> list[tuple[int, int, Path]]:
    found = []
    for p in wal_dir.iterdir():
        m = _SEGMENT_NAME.match(p.name)
        if m:
            found.append((int(m.group(1), 16), int(m.group(2), 16), p))
    found.sort()
    for (a, _, pa), (b, _, pb) in itertools.pairwise(found):
        if b != a + 1:
            raise CorruptWALError(f"{wal_dir}: segments missing between {pa.name} and {pb.name}")
    return found


def _scan(path: Path, data: bytes, is_last: bool, rlog: _ReplayLog, size: int | None = None) -> tuple[int, int, int]:
    """Apply every valid record of one segment; return (valid length, highest entry index, the
    length the segment was made: 0 if it does not say). `data` is the segment's bytes, or their
    beginning when the rest of the file, to `size`, is known to be zeros (see _read)."""
    n = len(data)
    size = n if size is None else size
    mv = memoryview(data)
    unpack_frame, crc32, unpackb = _FRAME.unpack_from, zlib.crc32, msgpack.unpackb
    off = 0
    max_index = made = 0
    while off < n:
        if n - off < _FRAME.size:
            if is_last or (made and _zeros_from(data, off)):
                return off, max_index, made
            raise CorruptWALError(f"{path}: truncated record header at byte offset {off}")
        length, crc = unpack_frame(data, off)
        start = off + _FRAME.size
        end = start + length
        if length == 0 or end > n or crc32(mv[start:end]) != crc:
            # The end of what was written, if only zeros follow it; torn if no whole record
            # follows it in the last segment (its length may be damaged too, so where it claims
            # to end proves nothing); otherwise acknowledged data is damaged.
            if made and length == 0 and _zeros_from(data, off):
                return off, max_index, made
            if is_last and _record_after(data, off + 1) is None:
                return off, max_index, made
            if length == 0:
                raise CorruptWALError(
                    f"{path}: damaged at byte offset {_nonzero_from(data, off)}: the records end at byte "
                    f"offset {off}, and only zeros may follow them (file size {size})"
                )
            raise CorruptWALError(
                f"{path}: record at byte offset {off} fails its checksum (length {length}, file size {size})"
            )
        try:
            rec = unpackb(mv[start:end])
            kind = rec[0]
            if kind == REC_ENTRY:
                e = Entry(rec[1], rec[2], _KINDS[rec[3]], rec[4])
                rlog.entry(e, path, off)
                if e.index > max_index:
                    max_index = e.index
            elif kind == REC_HARD_STATE:
                rlog.hard_state = HardState(rec[1], rec[2], rec[3])
            elif kind == REC_SNAPSHOT:
                rlog.snapshot_marker(rec[1], rec[2])
            elif kind == REC_LENGTH and off == 0:
                made = rec[1]
                if size < made:
                    raise CorruptWALError(
                        f"{path}: cut short at byte offset {size}: the segment was made {made} bytes long, "
                        f"so whatever it held from byte offset {size} on is lost"
                    )
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except CorruptWALError:
            raise
        except Exception as exc:
            raise CorruptWALError(f"{path}: undecodable record at byte offset {off}: {exc}") from exc
        off = end
    if off < size and not made and not is_last:  # (zeros after the records of an older-format segment)
        raise CorruptWALError(f"{path}: record at byte offset {off} fails its checksum (length 0, file size {size})")
    return off, max_index, made


def _record_after(data: bytes, start: int) -> int | None:
    """The offset of the first whole record (a frame whose checksum holds and whose payload
    decodes as a record) at or after `start`, or None. Only a damaged WAL makes this search long:
    after a torn write there is nothing but the torn record and zeros, which are skipped."""
    unpack_frame, crc32, head = _FRAME.unpack_from, zlib.crc32, _FRAME.size
    mv = memoryview(data)
    stop = _nonzero_end(data, start)  # a record's length has a nonzero byte, before this
    p = start
    while p < stop and p + head <= len(data):
        length, crc = unpack_frame(data, p)
        if length == 0:
            p = max(p + 1, _nonzero_from(data, p) - 3)  # past a run of zeros
            continue
        end = p + head + length
        if end <= len(data) and crc32(mv[p + head : end]) == crc:
            try:
                rec = msgpack.unpackb(mv[p + head : end])
            except Exception:
                rec = None
            if type(rec) is list and rec and rec[0] in (REC_ENTRY, REC_HARD_STATE, REC_SNAPSHOT, REC_LENGTH):
                return p
        p += 1
    return None


def _zeros_from(data: bytes, start: int) -> bool:
    """Whether every byte of `data` from `start` on is zero."""
    for chunk_start in range(start, len(data), ZERO_CHUNK):
        chunk = data[chunk_start : chunk_start + ZERO_CHUNK]
        if chunk.count(0) != len(chunk):
            return False
    return True


def _read(path: Path) -> tuple[bytes, int]:
    """A segment's bytes up to its first hole, and its length: most of a segment is a hole until
    written, and reading it would only read zeros (and mapping it could allocate it, on tmpfs).
    Past the first hole the file must hold only holes; if it holds anything else (a filesystem
    without holes, or damage), all of it is read."""
    with open(path, "rb") as f:
        fd = f.fileno()
        size = hole = os.fstat(fd).st_size
        if size:
            try:
                hole = os.lseek(fd, 0, os.SEEK_HOLE)
                if hole < size:
                    os.lseek(fd, hole, os.SEEK_DATA)  # ENXIO when nothing but holes follows
                    hole = size  # data past a hole: read it all
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # (a filesystem that cannot tell)
                    hole = size
        f.seek(0)
        return f.read(hole), size


def _nonzero_from(data: bytes, start: int) -> int:
    """The offset of the first nonzero byte of `data` at or after `start` (len(data) if none)."""
    for chunk_start in range(start, len(data), ZERO_CHUNK):
        chunk = data[chunk_start : chunk_start + ZERO_CHUNK]
        if rest := chunk.lstrip(b"\0"):
            return chunk_start + len(chunk) - len(rest)
    return len(data)


def _nonzero_end(data: bytes, start: int) -> int:
    """Where the bytes of `data` from `start` on stop being nonzero: `start` if they are all zero."""
    end = len(data)
    while end > start:
        chunk_start = max(start, end - ZERO_CHUNK)
        if rest := data[chunk_start:end].rstrip(b"\0"):
            return chunk_start + len(rest)
        end = chunk_start
    return start


def _cut_torn_tail(path: Path, valid: int, end: int, made: int) -> None:
    """Zero the torn bytes from `valid` to `end`, keeping the segment's length; a segment that does
    not record its length is truncated at `valid` instead."""
    with open(path, "r+b") as f:
        if made:
            f.seek(valid)
            for at in range(valid, end, ZERO_CHUNK):
                f.write(bytes(min(ZERO_CHUNK, end - at)))
            f.flush()
        else:
            f.truncate(valid)
        os.fsync(f.fileno())


def replay(wal_dir: Path, *, repair: bool) -> Replay:
    """Read every segment in order; with repair, cut a torn tail off the last one (logged)."""
    found = _list_segments(wal_dir)
    rlog = _ReplayLog()
    segments = []
    for k, (seq, first_index, path) in enumerate(found):
        data, size = _read(path)
        valid, max_index, made = _scan(path, data, k == len(found) - 1, rlog, size)
        end = _nonzero_end(data, valid) if made else size  # past the last record: what was torn
        del data
        if end > valid:
            where = {"file": str(path), "offset": valid, "dropped_bytes": end - valid}
            msg = "wal: torn tail in %s at byte offset %d, %d bytes dropped" + ("" if repair else " (not cut)")
            log.warning(msg, path, valid, end - valid, extra=where)
            if repair:
                _cut_torn_tail(path, valid, end, made)
        segments.append(Segment(path, seq, first_index, max_index, valid))
    prev = rlog.prev if rlog.prev is not None else rlog.marker[0]
    return Replay(rlog.entries, prev, rlog.marker, rlog.hard_state, segments)


class WAL:
    """The writer: replays on open (see `recovered`), then appends to the last segment."""

    def __init__(
        self, wal_dir: Path, *, segment_bytes: int = DEFAULT_SEGMENT_BYTES, stats: StorageStats | None = None
    ) -> None:
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes={segment_bytes} is too small (minimum 4096)")
        self.dir = Path(wal_dir)
        create_dirs_durably(self.dir)
        self.segment_bytes = segment_bytes
        self.stats = stats if stats is not None else StorageStats()
        self._packer = msgpack.Packer(use_bin_type=True)
        self._buf: list[bytes] = []
        self._buf_bytes = self._buf_records = self._buf_first_index = self._buf_max_index = 0
        self._fd = -1
        self._failed: BaseException | None = None
        self._closed = False

        rep = replay(self.dir, repair=True)
        self.recovered: Replay | None = rep  # the owner takes it and clears it to free memory
        self._segments = rep.segments
        self._hs_written = self._hs_staged = rep.hard_state
        self._marker_written = self._marker_staged = rep.marker
        self._last_index = rep.entries[-1].index if rep.entries else rep.prev_index
        if self._segments and self._segments[-1].size == 0:
            # A crash while creating a segment left it empty; the previous one is still whole.
            self._segments.pop().path.unlink()
            fsync_dir(self.dir)
        if self._segments:
            self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_CLOEXEC)
            self._seg_has_records = True
        else:
            self._write_out([], rotate_to=self._last_index + 1)
        self._update_size_stats()

    # ---- staging (no I/O) ---------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """Encode entries into the buffer; the caller has validated their indexes."""
        if not entries:
            return
        first, last = entries[0].index, entries[-1].index
        # Replay reads a gap, inside the batch or after what the WAL holds, as corruption.
        assert last - first == len(entries) - 1, f"entries {first}..{last} are not contiguous"
        assert first <= max(self._last_index, self._marker_staged[0]) + 1, (
            f"entry {first} leaves a gap after {self._last_index} (snapshot marker {self._marker_staged})"
        )
        pack, frame, crc32 = self._packer.pack, _FRAME.pack, zlib.crc32
        buf = self._buf
        nbytes = 0
        for e in entries:
            p = pack((REC_ENTRY, e.term, e.index, e.kind, e.data))
            buf.append(frame(len(p), crc32(p)))
            buf.append(p)
            nbytes += len(p)
        self._buf_bytes += nbytes + _FRAME.size * len(entries)
        self._buf_records += len(entries)
        if not self._buf_first_index:
            self._buf_first_index = first
        self._last_index = last
        self._buf_max_index = max(self._buf_max_index, self._last_index)

    def set_hard_state(self, hs: HardState) -> None:
        self._stage(self._hard_state_record(hs))
        self._hs_staged = hs

    def mark_snapshot(self, index: int, term: int) -> None:
        self._stage(self._record((REC_SNAPSHOT, index, term)))
        self._marker_staged = (index, term)

    # ---- I/O ----------------------------------------------------------------------------------

    def sync(self) -> None:
        """Write the buffer with one write() and make it durable with one fdatasync()."""
        self._check_usable()
        if not self._buf:
            return
        rotate = self._seg_has_records and self._segments[-1].size + self._buf_bytes > self.segment_bytes
        self._write_out(self._buf, rotate_to=(self._buf_first_index or self._last_index + 1) if rotate else 0)
        seg = self._segments[-1]
        # The rotation rule bounds a segment: only the first batch written to one may take it past
        # segment_bytes. Failing here means _buf_bytes miscounted what reached the file.
        assert seg.size <= self.segment_bytes or not self._seg_has_records, (
            f"{seg.path} grew to {seg.size} bytes, past segment_bytes={self.segment_bytes}"
        )
        stats = self.stats
        stats.syncs_total += 1
        stats.last_sync_records = self._buf_records
        stats.last_sync_bytes = self._buf_bytes
        seg.max_index = max(seg.max_index, self._buf_max_index)
        self._seg_has_records = True
        self._hs_written, self._marker_written = self._hs_staged, self._marker_staged
        self._buf = []
        self._buf_bytes = self._buf_records = self._buf_first_index = self._buf_max_index = 0
        self._update_size_stats()

    def compact(self, snapshot_index: int) -> int:
        """Delete the oldest segments whose every entry is <= snapshot_index; return how many.

        Only a prefix is deleted and never the live segment, so replay order is preserved. The
        caller must already have synced a marker and the hard state into the live segment.
        """
        self._check_usable()
        assert snapshot_index <= self._marker_written[0], (
            f"compacting to {snapshot_index} before a marker there is synced ({self._marker_written})"
        )
        removed = 0
        while len(self._segments) > 1 and self._segments[0].max_index <= snapshot_index:
            self._segments.pop(0).path.unlink()
            removed += 1
        if removed:
            fsync_dir(self.dir)
            self.stats.fsyncs_total += 1
            self._update_size_stats()
        return removed

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._failed is None:
                self.sync()
        finally:
            self._closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    # ---- internals ----------------------------------------------------------------------------

    def _stage(self, record: bytes) -> None:
        self._buf.append(record)
        self._buf_bytes += len(record)
        self._buf_records += 1

    def _record(self, fields: tuple[object, ...]) -> bytes:
        payload = self._packer.pack(fields)
        return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload

    def _hard_state_record(self, hs: HardState) -> bytes:
        return self._record((REC_HARD_STATE, hs.term, hs.voted_for, hs.commit))

    def _open_segment(self, first_index: int) -> bytes:
        """Create the next segment, make it live and return its header (not yet written)."""
        seq = self._segments[-1].seq + 1 if self._segments else 0
        # The new segment continues the log the WAL holds (or truncates it), never leaves a gap:
        # its entries follow the older segments' or the snapshot marker's.
        held = max((s.max_index for s in self._segments), default=0)
        marker = self._marker_staged[0]
        assert first_index <= max(held, marker) + 1, (
            f"segment {seq} would start at {first_index}: a gap after the log's {held} and the marker's {marker}"
        )
        path = self.dir / segment_name(seq, first_index)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        self._segments.append(Segment(path, seq, first_index, 0, 0))
        self._seg_has_records = False
        # Its full length at once (a hole until written), durable before any record claims it: a
        # segment found shorter than its first record says was cut short.
        os.ftruncate(self._fd, self.segment_bytes)
        _datasync(self._fd)
        self.stats.fsyncs_total += 1
        # The header describes what is already on disk, never what is still buffered.
        return (self._record((REC_LENGTH, self.segment_bytes)) + self._record((REC_SNAPSHOT, *self._marker_written))
                + self._hard_state_record(self._hs_written))

    def _write_out(self, parts: list[bytes], *, rotate_to: int) -> None:
        """One write() and one fdatasync(); first start a new segment if rotate_to is an index."""
        try:
            if rotate_to:
                if self._fd >= 0:  # the live segment was made durable by the previous sync
                    os.close(self._fd)
                    self._fd = -1
                parts = [self._open_segment(rotate_to), *parts]
            data = b"".join(parts)
            assert data, "an empty write: record offsets must strictly increase"
            # Records go right after the last one (the file is longer: the rest is zeros), at the
            # tracked size that replay's offsets, rotation and compaction all trust.
            view, offset = memoryview(data), self._segments[-1].size
            while view:
                written = os.pwrite(self._fd, view, offset)
                view, offset = view[written:], offset + written
            t0 = time.perf_counter()
            _datasync(self._fd)
            self.stats.last_fsync_seconds = time.perf_counter() - t0
            self.stats.fsyncs_total += 1
            if rotate_to:
                fsync_dir(self.dir)
                self.stats.fsyncs_total += 1
        except OSError as exc:
            self._failed = exc
            raise StorageError(
                f"WAL write to {self._segments[-1].path} failed; refusing further writes: {exc}"
            ) from exc
        self._segments[-1].size += len(data)

    def _update_size_stats(self) -> None:
        self.stats.wal_bytes = sum(s.size for s in self._segments)
        self.stats.wal_segments = len(self._segments)

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageClosedError(f"WAL {self.dir} is closed")
        if self._failed is not None:
            raise StorageError(f"WAL {self.dir} failed earlier and is unusable: {self._failed}")
