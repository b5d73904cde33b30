"""Wire format for Raft messages: msgpack-encoded tuples, and the frames that carry them.

Theory of operation
-------------------
Messages. A message goes on the wire as one msgpack array ``(tag, src, dst, term, *fields)``. The
tag is a small integer fixed in ``_TAGS`` below (never derived from declaration order, so
reordering ``MESSAGE_TYPES`` cannot silently change the wire format); the fields follow the
dataclass field order of the message type. Nested values are arrays too:

    Entry     -> (term, index, kind, data)
    Snapshot  -> (index, term, voters, learners, data)

Arrays rather than maps because field names would double the size of a heartbeat and this is the
hot path (thousands of AppendRequests per second): encoding is one attrgetter call plus
``msgpack.packb``; decoding is ``msgpack.unpackb``, one C-level comparison of the field types
against the layout, and a direct slot fill of the frozen dataclass.

The per-type layouts are derived once, at import, from the dataclass definitions in
``raftkv.core.messages``, so adding a field to a message needs no change here; adding a message
type needs one line in ``_TAGS`` (a test checks every type in MESSAGE_TYPES has a tag); a type
defined above the core registers itself with ``register_message_type``.

Decoding never trusts the peer: wrong arity, wrong field type, unknown tag, unknown entry kind or
bytes that are not msgpack all raise ``CodecError``, so the transport can close the connection
instead of handing the core a value it would crash on. Encoding checks the top-level field types
too, so a sender bug surfaces at the sender rather than as a peer closing the connection.

Frames. On a byte stream (TCP) each frame is a u32 big-endian length L, then L bytes: one kind
byte and a body.

    HELLO    b"RKV1" + sender node id (utf-8); the first frame on every connection
    MESSAGE  encode(message)
    CHUNK    u32 stream id, u64 total length, u64 offset, data: a slice of an encoded
             SnapshotRequest, so a big snapshot can share the link with heartbeats

``FrameDecoder`` is the receiving half with no I/O of its own (like h11): feed it bytes as they
arrive and it calls back with each complete message. It checks a frame's length as soon as its 4
header bytes are in (so garbage cannot make it buffer gigabytes), reassembles chunks in order and
raises CodecError on any violation, after delivering the good frames that preceded it.
"""

from __future__ import annotations

import dataclasses
import struct
import typing
from collections.abc import Callable
from operator import attrgetter
from typing import Any

import msgpack

from raftkv.core.messages import (
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    SnapshotRequest,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)

__all__ = ["ChunkStream", "CodecError", "FrameDecoder", "decode", "encode", "hello_frame", "message_frame",
           "message_types", "register_message_type"]

# Stable wire tags. Never reuse or renumber a tag: peers running different versions would
# misread each other's messages.
_TAGS: dict[type[Message], int] = {
    VoteRequest: 1,
    VoteResponse: 2,
    AppendRequest: 3,
    AppendResponse: 4,
    HeartbeatRequest: 5,
    HeartbeatResponse: 6,
    SnapshotRequest: 7,
    TimeoutNow: 8,
    TransferRequest: 9,
    ReadIndexRequest: 10,
    ReadIndexResponse: 11,
    # 12 and 13: the node drivers' own messages (raftkv/node/peer_messages.py), registered there
}

_KINDS: dict[int, EntryKind] = {int(k): k for k in EntryKind}
_ENTRIES = "entries"  # marker for a tuple[Entry, ...] field
_SNAPSHOT = "snapshot"  # marker for a Snapshot field
_BLOBS = "blobs"  # marker for a tuple[bytes, ...] field


class CodecError(ValueError):
    """The bytes are not a message this codec understands (unknown tag, malformed frame)."""


def _entries_out(entries: tuple[Entry, ...]) -> list[tuple[int, int, int, bytes]]:
    return [(e.term, e.index, e.kind, e.data) for e in entries]


_ENTRY_TYPES = (int, int, int, bytes)


def _entries_in(raw: tuple[Any, ...]) -> tuple[Entry, ...]:
    out = []
    try:
        for item in raw:
            # One C-level comparison checks arity and every field type (bool is not int here).
            if tuple(map(type, item)) != _ENTRY_TYPES:
                raise CodecError(f"malformed entry {item!r:.60}")
            term, index, kind, data = item
            out.append(Entry(term, index, _KINDS[kind], data))
    except (KeyError, TypeError) as exc:  # unknown kind; an entry that is not an array
        raise CodecError(f"malformed entry: {exc!r}") from exc
    return tuple(out)


def _blobs_in(raw: tuple[Any, ...]) -> tuple[bytes, ...]:
    if any(type(b) is not bytes for b in raw):
        raise CodecError("expected an array of byte strings")
    return raw


def _snapshot_out(s: Snapshot) -> tuple[Any, ...]:
    m = s.meta
    return (m.index, m.term, m.conf.voters, m.conf.learners, s.data)


def _str_tuple(raw: Any) -> tuple[str, ...]:
    if type(raw) is not tuple or any(type(x) is not str for x in raw):
        raise CodecError("expected an array of strings")
    return raw


def _snapshot_in(raw: Any) -> Snapshot:
    if type(raw) is not tuple or len(raw) != 5:
        raise CodecError("snapshot must be a 5-array")
    index, term, voters, learners, data = raw
    if type(index) is not int or type(term) is not int or type(data) is not bytes:
        raise CodecError("snapshot field of the wrong type")
    conf = ConfState(_str_tuple(voters), _str_tuple(learners))
    return Snapshot(SnapshotMeta(index, term, conf), data)


# Converters for the fields that are not plain scalars (a byte-string array is only checked:
# msgpack would quietly send a str in it, which every peer then rejects).
_TO_WIRE: dict[str, Callable[[Any], Any]] = {_ENTRIES: _entries_out, _SNAPSHOT: _snapshot_out, _BLOBS: _blobs_in}
_FROM_WIRE: dict[str, Callable[[Any], Any]] = {_ENTRIES: _entries_in, _SNAPSHOT: _snapshot_in, _BLOBS: _blobs_in}


@dataclasses.dataclass(frozen=True, slots=True)
class _Layout:
    cls: type[Message]
    tag: int
    names: tuple[str, ...]
    kinds: tuple[Any, ...]  # int/str/bool/bytes or a marker (_ENTRIES, _SNAPSHOT)
    wire_types: tuple[type, ...]  # exact type of each decoded field (markers arrive as tuples)
    py_types: tuple[type, ...]  # exact type of each field of a well-formed message
    getter: Callable[[Message], tuple[Any, ...]]
    special: tuple[int, ...]  # positions holding entries or a snapshot
    setters: tuple[Callable[[Any, Any], None], ...] | None  # slot setters for the fast build

    def build(self, values: tuple[Any, ...] | list[Any]) -> Message:
        if self.setters is None:
            return self.cls(**dict(zip(self.names, values, strict=True)))
        # Frozen dataclass __init__ costs ~2 us for a message (object.__setattr__ per field);
        # writing the slots directly halves that. Values were type-checked by decode().
        obj = object.__new__(self.cls)
        for setter, v in zip(self.setters, values, strict=True):
            setter(obj, v)
        return obj


def _layout(cls: type[Message], tag: int) -> _Layout:
    hints = typing.get_type_hints(cls)
    names = tuple(f.name for f in dataclasses.fields(cls))
    kinds: list[Any] = []
    for name in names:
        hint = hints[name]
        if hint in (int, str, bool, bytes):
            kinds.append(hint)
        elif hint == tuple[Entry, ...]:
            kinds.append(_ENTRIES)
        elif hint is Snapshot:
            kinds.append(_SNAPSHOT)
        elif hint == tuple[bytes, ...]:
            kinds.append(_BLOBS)
        else:  # a new field type needs a converter here; fail at import, not on the wire
            raise TypeError(f"codec cannot carry {cls.__name__}.{name}: {hint!r}")
    special = tuple(i for i, k in enumerate(kinds) if k in (_ENTRIES, _SNAPSHOT, _BLOBS))
    # The fast build skips __init__, so it is only safe while the class has no __post_init__.
    fast = not hasattr(cls, "__post_init__") and all(hasattr(cls, n) for n in names)
    setters = tuple(getattr(cls, n).__set__ for n in names) if fast else None
    wire_types = tuple(tuple if k in (_ENTRIES, _SNAPSHOT, _BLOBS) else k for k in kinds)
    py_types = tuple({_ENTRIES: tuple, _SNAPSHOT: Snapshot, _BLOBS: tuple}.get(k, k) for k in kinds)
    return _Layout(cls, tag, names, tuple(kinds), wire_types, py_types, attrgetter(*names), special, setters)


_BY_TYPE: dict[type[Message], _Layout] = {cls: _layout(cls, tag) for cls, tag in _TAGS.items()}
_BY_TAG: dict[int, _Layout] = {lay.tag: lay for lay in _BY_TYPE.values()}
assert len(_BY_TAG) == len(_TAGS), "duplicate wire tag"


def register_message_type(cls: type[Message], tag: int) -> None:
    """Carry a message type defined above the core (the node drivers' own messages ride the
    Raft links too). The tag is as stable as the ones above: never reuse or renumber one."""
    known = _BY_TYPE.get(cls)
    if known is not None and known.tag == tag:
        return  # registered already
    if known is not None or tag in _BY_TAG:
        raise ValueError(f"wire tag {tag} or type {cls.__name__} is taken")
    _BY_TYPE[cls] = _BY_TAG[tag] = _layout(cls, tag)


def message_types() -> tuple[type[Message], ...]:
    """Every message type the codec carries, in tag order."""
    return tuple(lay.cls for _, lay in sorted(_BY_TAG.items()))

# msgpack.packb, not a shared Packer: a Packer is ~0.3 us faster but not safe to share between
# threads, and encode() may be called from storage or API threads too.
_packb = msgpack.packb


def encode(message: Message) -> bytes:
    """Serialise one message to bytes (the body of a transport frame)."""
    lay = _BY_TYPE.get(type(message))
    if lay is None:
        raise CodecError(f"no wire tag for {type(message).__name__}")
    values = lay.getter(message)
    if tuple(map(type, values)) != lay.py_types:  # refuse to send what every peer would reject
        got = ", ".join(type(v).__name__ for v in values)
        raise CodecError(f"cannot encode {type(message).__name__} with fields of types ({got})")
    if lay.special:
        values = list(values)
        for i in lay.special:
            values[i] = _TO_WIRE[lay.kinds[i]](values[i])
    try:
        return _packb((lay.tag, *values))
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a str where bytes belong
        raise CodecError(f"cannot encode {type(message).__name__}: {exc}") from exc


def decode(data: bytes | bytearray | memoryview) -> Message:
    """Parse the bytes produced by ``encode``; raise CodecError on anything else."""
    try:
        obj = msgpack.unpackb(data, use_list=False, raw=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise CodecError(f"not a msgpack frame: {exc}") from exc
    if type(obj) is not tuple or not obj:
        raise CodecError("frame is not a non-empty array")
    lay = _BY_TAG.get(obj[0]) if type(obj[0]) is int else None
    if lay is None:
        raise CodecError(f"unknown message tag {obj[0]!r}")
    values = obj[1:]
    if tuple(map(type, values)) != lay.wire_types:  # arity and every field's type in one compare
        got = ", ".join(type(v).__name__ for v in values)
        raise CodecError(f"{lay.cls.__name__}: fields ({got}) do not match {lay.names}")
    if lay.special:
        values = list(values)
        for i in lay.special:
            values[i] = _FROM_WIRE[lay.kinds[i]](values[i])
    return lay.build(values)


# ---- framing ----------------------------------------------------------------------------------

FRAME_HEADER = struct.Struct(">IB")  # frame length (counting the kind byte), kind
_LEN = struct.Struct(">I")
_CHUNK = struct.Struct(">IQQ")  # stream id, total length, offset
HELLO, MESSAGE, CHUNK = 0, 1, 2
_MAGIC = b"RKV1"


def hello_frame(node_id: str) -> bytes:
    body = _MAGIC + node_id.encode()
    return FRAME_HEADER.pack(len(body) + 1, HELLO) + body


def message_frame(body: bytes) -> bytes:
    """The header to write before ``body`` (an encoded message); kept apart to avoid a copy."""
    return FRAME_HEADER.pack(len(body) + 1, MESSAGE)


class ChunkStream:
    """Sending half of chunking: the CHUNK frames of one encoded message, one at a time."""

    def __init__(self, message: Message, stream_id: int, chunk_bytes: int) -> None:
        self.message, self.stream_id, self.chunk_bytes = message, stream_id, chunk_bytes
        self.data = encode(message)
        self.offset = 0

    @property
    def done(self) -> bool:
        return self.offset >= len(self.data)

    def restart(self, stream_id: int) -> None:
        """Start over (on a new connection: the receiver dropped the partial stream)."""
        self.stream_id, self.offset = stream_id, 0

    def next_frame(self) -> tuple[bytes, bytes]:
        """(header, piece) of the next chunk; a zero-length message still gets one frame."""
        piece = self.data[self.offset : self.offset + self.chunk_bytes]
        head = _CHUNK.pack(self.stream_id, len(self.data), self.offset)
        self.offset += len(piece)
        return FRAME_HEADER.pack(len(head) + len(piece) + 1, CHUNK) + head, piece


class FrameDecoder:
    """Splits one connection's byte stream into messages; sans-I/O."""

    def __init__(
        self, on_message: Callable[[str, Message, int], None], max_frame_bytes: int, max_snapshot_bytes: int
    ) -> None:
        self.on_message = on_message  # called with (sender id from the hello, message, wire bytes)
        self.max_frame_bytes, self.max_snapshot_bytes = max_frame_bytes, max_snapshot_bytes
        self.peer: str | None = None  # from the hello
        self._buf = bytearray()
        self._stream_id, self._stream_total, self._stream = -1, 0, bytearray()

    def feed(self, data: bytes) -> None:
        """Deliver every complete frame in the stream so far; CodecError leaves the decoder
        unusable (the caller closes the connection)."""
        buf = self._buf
        buf += data
        pos, have, limit = 0, len(buf), self.max_frame_bytes
        with memoryview(buf) as view:  # zero-copy bodies for decode()
            while have - pos >= 4:
                (length,) = _LEN.unpack_from(buf, pos)
                if length == 0 or length > limit:
                    raise CodecError(f"frame length {length} outside 1..{limit}")
                end = pos + 4 + length
                if end > have:
                    break
                self._frame(buf[pos + 4], view[pos + 5 : end])
                pos = end
        del buf[:pos]

    def _frame(self, kind: int, body: memoryview) -> None:
        if self.peer is None:
            if kind != HELLO or body[:4] != _MAGIC or len(body) == 4:
                raise CodecError("first frame is not a hello with a node id")
            try:
                self.peer = bytes(body[4:]).decode()
            except UnicodeDecodeError as exc:
                raise CodecError("hello with a non-utf-8 node id") from exc
        elif kind == MESSAGE:
            self._message(body, len(body) + 5)
        elif kind == CHUNK:
            self._chunk(body)
        else:
            raise CodecError(f"unknown frame kind {kind}")

    def _message(self, body: memoryview | bytearray, nbytes: int) -> None:
        m = decode(body)
        if m.src != self.peer:  # the hello names the sender; a message may not claim another
            raise CodecError(f"message from {m.src!r} on {self.peer!r}'s connection")
        self.on_message(m.src, m, nbytes)

    def _chunk(self, body: memoryview) -> None:
        if len(body) < _CHUNK.size:
            raise CodecError("short chunk header")
        stream_id, total, offset = _CHUNK.unpack_from(body)
        if offset == 0:  # a new stream replaces any partial one (the sender started over)
            if total > self.max_snapshot_bytes:
                raise CodecError(f"snapshot of {total} bytes exceeds the limit")
            self._stream_id, self._stream_total, self._stream = stream_id, total, bytearray()
        elif stream_id != self._stream_id or offset != len(self._stream):
            raise CodecError(f"chunk out of sequence stream={stream_id} offset={offset}")
        self._stream += body[_CHUNK.size :]
        if len(self._stream) > self._stream_total:
            raise CodecError("snapshot stream longer than announced")
        if len(self._stream) == self._stream_total:
            data, self._stream = self._stream, bytearray()
            self._message(data, len(data))
