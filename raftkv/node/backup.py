"""Backups of a live cluster, and new clusters started from them (etcdctl snapshot save, etcdutl
snapshot restore).

Theory of operation
-------------------
Save. A node takes a linearizable read barrier (ReadIndex), so its state machine holds every write
acknowledged before the request, and then freezes the state machine at once, on the event loop
(`freeze`): whatever this replica has applied at that moment (at least the read index) is the cut,
one applied index and one revision, every key as it was at that revision. Encoding and hashing the
image run off the loop. The file:

    magic "RKVBACKP" | format version: u32 LE | header length: u32 LE | crc32(header): u32 LE
    | header: UTF-8 JSON | body: the state machine's snapshot image

The header holds the revision, the applied index, the key count, the cluster's members at the cut
(from the replicated member table), the body's size and sha256, and who took it when. The body is
exactly `KVStateMachine.snapshot()` (canonical msgpack), so its sha256 is also the `kvDigest` any
replica reports at that applied index. The crc guards the header and the sha256 the body; a file
longer or shorter than its header says is refused too: one flipped or missing byte anywhere is an
error, never a silently different store. The one exception is a file saved by etcdctl through
etcd's API (raftkv/etcd/), which ends with etcd's trailer (padding and a sha256 of the file), and
is read once that sha256 checks out.

Restore. One data directory per member of the NEW cluster (the --cluster given, as etcdutl takes
--initial-cluster), the same on every member but for the identity file. The node must find in it
a log that describes its own cluster, like a new cluster's (membership.is_self_describing): here a
storage snapshot at the backup's applied index N, term BOOTSTRAP_TERM, whose meta.conf has the new
members as voters, and whose state machine image is the backup's with the member table replaced by
the new members' records and the removed ids forgotten (as etcdutl drops the member buckets: the
new cluster's membership history begins at the restore). Every member writes the same snapshot
bytes, so they start as one cluster at index N and hold one digest; the first election is for
term 2. Keys, revisions and request-key tables are the backup's, so the revision continues from it
and a retry of a write the backup remembers is still answered once.

The identity file is written as a founding member's (startup.founding_config, claim_data_dir), so
`raftkv node --id X --cluster <the same>` accepts the directory and any other command line is
refused. Everything is verified before anything is written, and written into a staging directory
beside the target that is renamed into place last: a failed restore leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from raftkv.core import ConfState, HardState, Snapshot, SnapshotMeta
from raftkv.kv import KVStateMachine
from raftkv.storage import DiskStorage
from raftkv.storage.wal import fsync_dir

from .config import Member
from .membership import BOOTSTRAP_TERM, MemberRecord
from .snapshots import pack_between_turns
from .startup import claim_data_dir, founding_config

__all__ = ["FORMAT_VERSION", "BackupError", "BackupHeader", "BackupImage", "Cut", "freeze", "install_backup_file",
           "parse_backup", "partial_path", "read_backup", "restore_data_dir", "take_backup"]

MAGIC = b"RKVBACKP"
FORMAT_VERSION = 1
_PREAMBLE = struct.Struct("<8sIII")  # magic, format version, header length, crc32(header)
STREAM_CHUNK_BYTES = 1 << 20  # what the node writes to the socket at a time
ETCD_ALIGN_BYTES = 512  # etcd's snapshot stream: the data padded to a multiple of this, then its sha256


class BackupError(Exception):
    """Not a usable backup file, or a restore that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class BackupHeader:
    revision: int
    applied_index: int
    keys: int
    members: dict[str, MemberRecord]  # member id -> its record, from the replicated member table
    body_bytes: int
    sha256: str  # of the body
    taken_by: str  # the node that answered
    taken_at: str  # UTC, ISO 8601

    def as_json(self) -> dict[str, Any]:
        members = [{"id": member_id, "name": m.name, "clientURL": m.client_url, "peerURL": m.peer_address()}
                   for member_id, m in sorted(self.members.items())]
        return {"revision": self.revision, "appliedIndex": self.applied_index, "keys": self.keys,
                "members": members, "bodyBytes": self.body_bytes, "sha256": self.sha256,
                "takenBy": self.taken_by, "takenAt": self.taken_at}

    def encode(self) -> bytes:
        return json.dumps(self.as_json(), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> BackupHeader:
        """Raises ValueError, KeyError or TypeError when `raw` is not a header."""
        h = json.loads(raw)
        members = {}
        for m in h["members"]:
            host, _, port = m["peerURL"].rpartition(":")
            members[m["id"]] = MemberRecord(m["name"], m["clientURL"], host, int(port))
        header = cls(h["revision"], h["appliedIndex"], h["keys"], members, h["bodyBytes"], h["sha256"],
                     h["takenBy"], h["takenAt"])
        if not all(type(n) is int and n >= 0 for n in (header.revision, header.applied_index, header.keys,
                                                       header.body_bytes)):
            raise ValueError("revision, appliedIndex, keys and bodyBytes must be whole numbers")
        return header


@dataclass(frozen=True, slots=True)
class BackupImage:
    """A whole backup file: its header and the state machine image it describes."""

    header: BackupHeader
    body: bytes

    def head(self) -> bytes:
        """The bytes before the body: preamble and header."""
        encoded = self.header.encode()
        return _PREAMBLE.pack(MAGIC, FORMAT_VERSION, len(encoded), zlib.crc32(encoded)) + encoded

    def size(self) -> int:
        return len(self.head()) + len(self.body)

    def chunks(self, max_chunk_bytes: int = STREAM_CHUNK_BYTES) -> Iterator[bytes | memoryview]:
        """The file's bytes in order, at most `max_chunk_bytes` at a time (the body is not copied)."""
        yield self.head()
        body = memoryview(self.body)
        for start in range(0, len(body), max_chunk_bytes):
            yield body[start : start + max_chunk_bytes]

    def state_machine(self) -> KVStateMachine:
        """The store the backup holds, checked against its header."""
        kv = KVStateMachine()
        try:
            kv.restore(self.body)
        except ValueError as exc:
            raise BackupError(f"the backup's image cannot be read: {exc}") from None
        found = (kv.revision, kv.applied_index, len(kv))
        said = (self.header.revision, self.header.applied_index, self.header.keys)
        if found != said:
            raise BackupError(f"the image holds revision, applied index and key count {found}, the header says {said}")
        return kv


@dataclass
class Cut:
    """The store as it was when frozen: its image, still to be packed (`parts`, as
    `KVStateMachine.snapshot_later` gives them), and what the header will say of it."""

    parts: Iterator[bytes]
    revision: int
    applied_index: int
    keys: int
    members: dict[str, MemberRecord]
    taken_by: str
    taken_at: str

    def image(self, body: bytes) -> BackupImage:
        """The backup of `body`, the parts joined; hashing a large one takes a while (on any thread)."""
        header = BackupHeader(self.revision, self.applied_index, self.keys, self.members, len(body),
                              hashlib.sha256(body).hexdigest(), self.taken_by, self.taken_at)
        return BackupImage(header, body)


def freeze(kv: KVStateMachine, taken_by: str) -> Cut:
    """Take the cut now (call it on the event loop, after a read barrier); its parts may be packed
    later, while applying goes on."""
    members = {member_id: MemberRecord.decode(details) for member_id, details in kv.members.items()}
    return Cut(kv.snapshot_later(), kv.revision, kv.applied_index, len(kv), members, taken_by,
               datetime.now(UTC).isoformat(timespec="seconds"))


async def take_backup(kv: KVStateMachine, taken_by: str) -> BackupImage:
    """The backup of the store as it is now (call it on the event loop, after a read barrier): the
    cut at once, packed between the loop's other work while applying goes on (seconds for a
    million keys), hashed in a thread (sha256 lets go of the interpreter's lock)."""
    cut = freeze(kv, taken_by)
    body = await pack_between_turns(cut.parts)
    return await asyncio.get_running_loop().run_in_executor(None, cut.image, body)


# ---- reading and writing files -----------------------------------------------------------------


def parse_backup(raw: bytes, where: str) -> BackupImage:
    """A backup file's bytes, verified (`where` names the file in errors)."""
    if len(raw) < _PREAMBLE.size:
        raise BackupError(f"{where}: {len(raw)} bytes, too short to be a raftkv backup")
    magic, version, header_bytes, header_crc = _PREAMBLE.unpack_from(raw)
    if magic != MAGIC:
        raise BackupError(f"{where}: not a raftkv backup (it begins with {magic!r}, not {MAGIC!r})")
    if version != FORMAT_VERSION:
        raise BackupError(f"{where}: backup format {version}; this raftkv reads format {FORMAT_VERSION}")
    view = memoryview(raw)
    header_end = _PREAMBLE.size + header_bytes
    if header_end > len(raw) or zlib.crc32(view[_PREAMBLE.size : header_end]) != header_crc:
        raise BackupError(f"{where}: the header's checksum does not match: the file is damaged or truncated")
    try:
        header = BackupHeader.decode(bytes(view[_PREAMBLE.size : header_end]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(f"{where}: malformed header ({exc!r})") from None
    body_end = header_end + header.body_bytes
    if len(raw) > body_end and _etcd_trailer_holds(view, body_end):
        view = view[:body_end]
    body = view[header_end:]
    if len(body) != header.body_bytes:
        raise BackupError(f"{where}: the body is {len(body)} bytes but the header says {header.body_bytes}: "
                          "the file is truncated or has bytes added")
    digest = hashlib.sha256(body).hexdigest()
    if digest != header.sha256:
        raise BackupError(f"{where}: checksum mismatch: the body's sha256 is {digest}, the header says "
                          f"{header.sha256}: the file is damaged")
    return BackupImage(header, bytes(body))


def _etcd_trailer_holds(view: memoryview, body_end: int) -> bool:
    """Whether what follows the body is the trailer etcd's snapshot stream ends with: zeros up to a
    multiple of ETCD_ALIGN_BYTES, then the sha256 of everything before it. etcdctl snapshot save
    refuses a stream without it and keeps it in the file, so a backup saved that way (from
    raftkv/etcd/) has it, and is that backup whole once it checks out."""
    n, digest_bytes = len(view), hashlib.sha256().digest_size
    return (n % ETCD_ALIGN_BYTES == digest_bytes and not any(view[body_end : n - digest_bytes])
            and hashlib.sha256(view[: n - digest_bytes]).digest() == view[n - digest_bytes :])


def read_backup(path: Path) -> BackupImage:
    """The backup in `path`, verified."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    return parse_backup(raw, str(path))


def partial_path(final: Path) -> Path:
    """Where a backup is written before it is complete: beside `final`, so the rename is atomic."""
    return final.with_name(f".{final.name}.partial-{os.getpid()}")


def install_backup_file(partial: Path, final: Path) -> BackupHeader:
    """Verify the backup written to `partial`, make it durable and rename it to `final`: whoever
    reads `final` finds the file it had before or the whole new one, never part of one."""
    header = read_backup(partial).header
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    os.replace(partial, final)
    fsync_dir(final.parent)
    return header


# ---- restore -------------------------------------------------------------------------------------


def restore_data_dir(backup: Path, node_id: str, cluster: str, data_dir: Path) -> BackupHeader:
    """Write `data_dir` for member `node_id` of the new cluster `cluster` (id@host:http:raft,...)
    from the backup; then `raftkv node --id node_id --cluster cluster` starts it. Raises
    ConfigError for a bad --id/--cluster and BackupError for a damaged file or a used directory;
    either way nothing is written."""
    staging = data_dir.parent / f".{data_dir.name}.restoring-{os.getpid()}"
    cfg = founding_config(node_id, cluster, staging)
    image = read_backup(backup)
    _refuse_used(data_dir)
    if image.header.applied_index < 1:
        raise BackupError(f"{backup} was taken at applied index 0: there is nothing to restore")
    data = _new_cluster_image(image, cfg.members)
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted restore of the same pid
    try:
        _write_storage(cfg.storage_dir, image.header.applied_index, tuple(sorted(cfg.members)), data)
        claim_data_dir(cfg)
        os.replace(staging, data_dir)  # over an empty directory too
        fsync_dir(data_dir.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BackupError(f"cannot write {data_dir}: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return image.header


def _new_cluster_image(image: BackupImage, members: dict[str, Member]) -> bytes:
    """The backup's state machine image with the new cluster's member table, and no removed ids
    (an id of the old cluster's history must not stop a new member of the same name)."""
    kv = image.state_machine()
    kv.members = {member_id: MemberRecord.of(member).encode() for member_id, member in members.items()}
    kv.removed_members = set()
    return kv.snapshot()


def _refuse_used(data_dir: Path) -> None:
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise BackupError(f"{data_dir} exists and is not an empty directory: a restore writes a new data directory; "
                          "give a fresh --data-dir (or remove that one)")


def _write_storage(raft_dir: Path, index: int, voters: tuple[str, ...], data: bytes) -> None:
    """The storage of a node whose log was compacted into a snapshot at `index`: committed, applied
    and self-describing, with nothing after it."""
    with DiskStorage(raft_dir) as storage:
        storage.set_hard_state(HardState(BOOTSTRAP_TERM, None, index))
        storage.save_snapshot(Snapshot(SnapshotMeta(index, BOOTSTRAP_TERM, ConfState(voters)), data))

