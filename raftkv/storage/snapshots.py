"""Snapshot files: one self-checking file per snapshot, written atomically, newest two kept.

Theory of operation
-------------------
A snapshot lives in `snap/<term>-<index>.snap` (16 hex digits each, as etcd names them) laid out
as

    magic "RKVSNAP1" | meta length: u32 LE | crc32(meta + data): u32 LE | meta | data

where meta is msgpack `(index, term, voters, learners)` and data is the state machine's opaque
image. One checksum covers meta and data, so a file either reads back exactly as written or is
reported corrupt; the name must also agree with the meta inside.

Atomicity comes from the classic sequence: write `<name>.tmp`, fsync it, rename it over the final
name, fsync the directory. A crash leaves either no file or a whole one; leftover `.tmp` files
are removed on open. Readers never see a half-written snapshot under a final name.

The newest two snapshots are kept so that if the newest one is damaged later (bit rot, a bad
sector) the storage can fall back on the previous one, provided the WAL still reaches back to
it; DiskStorage decides that, this module only reads, writes and lists files.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

import msgpack

from raftkv.core.messages import ConfState, Snapshot, SnapshotMeta
from raftkv.storage.base import CorruptSnapshotError
from raftkv.storage.wal import create_dirs_durably, fsync_dir

log = logging.getLogger("raftkv.storage")

MAGIC = b"RKVSNAP1"
_HEADER = struct.Struct("<8sII")  # magic, meta length, crc32(meta + data)
_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.snap$")


def snapshot_name(term: int, index: int) -> str:
    return f"{term:016x}-{index:016x}.snap"


def encode_snapshot(snapshot: Snapshot) -> tuple[bytes, bytes]:
    """Return (header + meta, data) ready to be written one after the other."""
    m = snapshot.meta
    meta = msgpack.packb((m.index, m.term, list(m.conf.voters), list(m.conf.learners)), use_bin_type=True)
    crc = zlib.crc32(snapshot.data, zlib.crc32(meta))
    return _HEADER.pack(MAGIC, len(meta), crc) + meta, snapshot.data


def decode_snapshot(raw: bytes, where: str) -> Snapshot:
    """Parse and verify a snapshot file's bytes; `where` names the file in errors."""
    if len(raw) < _HEADER.size:
        raise CorruptSnapshotError(f"{where}: file is {len(raw)} bytes, shorter than the header")
    magic, meta_len, crc = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise CorruptSnapshotError(f"{where}: not a raftkv snapshot (magic {magic!r})")
    body = memoryview(raw)[_HEADER.size :]
    if meta_len > len(body) or zlib.crc32(body) != crc:
        raise CorruptSnapshotError(f"{where}: checksum mismatch (file damaged or truncated)")
    try:
        index, term, voters, learners = msgpack.unpackb(body[:meta_len])
    except Exception as exc:
        raise CorruptSnapshotError(f"{where}: undecodable metadata: {exc}") from exc
    meta = SnapshotMeta(index, term, ConfState(tuple(voters), tuple(learners)))
    return Snapshot(meta, bytes(body[meta_len:]))


class SnapshotStore:
    """The `snap/` directory: save atomically, list newest first, read with verification."""

    def __init__(self, snap_dir: Path, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError("keep must be >= 1")
        self.dir = Path(snap_dir)
        create_dirs_durably(self.dir)
        self.keep = keep
        self.fsyncs = 0
        stale = list(self.dir.glob("*.tmp"))
        for p in stale:  # an interrupted save; the previous snapshot is still intact
            p.unlink()
        if stale:
            fsync_dir(self.dir)

    def paths_newest_first(self) -> list[Path]:
        """Snapshot files ordered by (index, term), newest first."""
        found = []
        for p in self.dir.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(2), 16), int(m.group(1), 16), p))
        found.sort(reverse=True)
        return [p for _, _, p in found]

    def save(self, snapshot: Snapshot) -> Path:
        """Write durably and atomically; return the final path."""
        m = snapshot.meta
        final = self.dir / snapshot_name(m.term, m.index)
        tmp = final.with_name(final.name + ".tmp")
        head, data = encode_snapshot(snapshot)
        with open(tmp, "wb") as f:
            f.write(head)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(self.dir)
        self.fsyncs += 2
        return final

    def read(self, path: Path) -> Snapshot:
        m = _NAME.match(path.name)
        if not m:
            raise CorruptSnapshotError(f"{path}: not a snapshot file name")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CorruptSnapshotError(f"{path}: unreadable: {exc}") from exc
        snap = decode_snapshot(raw, str(path))
        if (snap.meta.term, snap.meta.index) != (int(m.group(1), 16), int(m.group(2), 16)):
            raise CorruptSnapshotError(
                f"{path}: metadata (term {snap.meta.term}, index {snap.meta.index}) does not match the file name"
            )
        return snap

    def prune(self) -> list[Path]:
        """Delete all but the newest `keep` snapshots; return what was deleted."""
        doomed = self.paths_newest_first()[self.keep :]
        for p in doomed:
            p.unlink()
        if doomed:
            fsync_dir(self.dir)
            self.fsyncs += 1
        return doomed
