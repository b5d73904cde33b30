"""Bytes held as text: how a key or value that is not UTF-8 lives in a store of text.

raftkv's keys and string values are Python text; etcd's are bytes, and etcd's clients write any
bytes (`etcdctl check perf` writes random binary keys). A byte string becomes text by decoding
it as UTF-8 with Python's surrogate escapes (PEP 383): each byte that is not part of valid UTF-8
becomes the lone surrogate U+DC80 + byte, and encoding the same way gives the same bytes back.
Text of valid UTF-8 is unchanged, so everything written as text before is what it was, in the
log, in snapshots and on the wire.

One text per byte string: a text whose escapes spell valid UTF-8 ("\\udcc3\\udca9", the bytes of
"é") would be a second name for "é", so such text is refused (`canonical`). Other lone surrogates
("\\ud800") hold no byte and are refused too.

Order: keys sort by their bytes, as etcd's do (`byte_order`). Code point order is byte order for
valid UTF-8, but not for escaped bytes: U+DC80 (byte 80) would sort after "é" (bytes c3 a9), and
a range whose end is not valid UTF-8, as etcdctl's end of the prefix "п" (d0 bf -> d0 c0) is,
would hold "слово" (d1 81 ...) too.
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = ["ESCAPED_BYTES", "ESCAPES", "as_bytes", "as_text", "byte_order", "canonical", "packb", "unpackb"]

ESCAPES = "surrogateescape"
ESCAPED_BYTES = "".join(map(chr, range(0xDC80, 0xDD00)))  # the text of each byte that is not UTF-8


def as_text(data: bytes) -> str:
    return data.decode("utf-8", ESCAPES)


def as_bytes(text: str) -> bytes:
    return text.encode("utf-8", ESCAPES)


def byte_order(text: str) -> str:
    """A text whose code point order and prefixes are those of `text`'s bytes: `text` itself when
    it is ASCII (nearly every key: no copy), else its bytes as code points 0..255."""
    return text if text.isascii() else as_bytes(text).decode("latin-1")


def canonical(text: str) -> str | None:
    """Why `text` cannot stand for a byte string (None: it can)."""
    if text.isascii():
        return None
    try:
        data = as_bytes(text)
    except UnicodeEncodeError:
        return "string is not valid Unicode (lone surrogate)"
    if as_text(data) != text:
        return "escaped bytes (U+DC80..U+DCFF) that spell valid UTF-8: write the characters themselves"
    return None


def packb(obj: Any) -> bytes:
    """msgpack bytes of `obj`, whose strings may hold escaped bytes; the common case (none) takes
    msgpack's own fast UTF-8 path."""
    try:
        return msgpack.packb(obj)
    except UnicodeEncodeError:
        return msgpack.packb(obj, unicode_errors=ESCAPES)


def unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, unicode_errors=ESCAPES)
