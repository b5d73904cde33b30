"""Between etcd's bytes and raftkv's text: keys, values, ranges and key-values.

etcd's keys and values are bytes; raftkv's keys are text and its values JSON. A key or value that
comes in over the etcd API is stored as text (a JSON string), its bytes that are not UTF-8 as
escaped bytes (raftkv/byte_text.py), and goes out as the same bytes. A value written through
raftkv's HTTP API as some other JSON value (a number, an object) goes out as its compact JSON
text. Code-point order is byte order for UTF-8, so ranges over text keys are etcd's ranges over
the same bytes (byte_text.py says where escaped bytes differ).
"""

from __future__ import annotations

import json
from typing import Any

from raftkv.byte_text import as_bytes, as_text, byte_order
from raftkv.etcd.errors import EMPTY_KEY
from raftkv.etcd.pb import kv_pb2
from raftkv.kv import KeyValue

__all__ = ["Bounds", "key_text", "kv_from_result", "kv_message", "prefix_end", "value_bytes"]

ALL_FROM = b"\0"  # a range_end of "\0" means "every key from key on"; key "\0" too means every key


def prefix_end(key: bytes) -> bytes:
    """The first key past every key that starts with `key` (etcd's GetPrefixRangeEnd): its last
    byte below 0xff, plus one; "\\0" (no end) when there is none."""
    stripped = key.rstrip(b"\xff")
    return stripped[:-1] + bytes([stripped[-1] + 1]) if stripped else ALL_FROM


def key_text(key: bytes) -> str:
    if not key:
        raise EMPTY_KEY()
    return as_text(key)


def value_bytes(value: Any) -> bytes:
    if type(value) is str:
        return as_bytes(value)
    return as_bytes(json.dumps(value, separators=(",", ":"), ensure_ascii=False))


class Bounds:
    """An etcd key range: one key (`single`), or keys from `start` (inclusive) to `end`
    (exclusive; None: no end). As in etcd, a key must be given (a client that sent none would
    otherwise read or delete from the first key on); "\\0" is the first key."""

    def __init__(self, key: bytes, range_end: bytes) -> None:
        self.single = not range_end
        if self.single:
            self.start, self.end = key_text(key), None
        else:
            self.start = "" if key == ALL_FROM else key_text(key)
            self.end = None if range_end == ALL_FROM else as_text(range_end)
        # the keys under one prefix and none else (what `--prefix` sends, whatever bytes it ends in), or None
        self.prefix: str | None = None
        if key == ALL_FROM and range_end == ALL_FROM:
            self.prefix = ""
        elif range_end and range_end == prefix_end(key):
            self.prefix = as_text(key)
        # etcd's ranges are of bytes: compared in byte order (an end that is not UTF-8, as the end
        # of a prefix of non-ASCII characters is, sorts in text among unrelated characters)
        self._ordered_start = byte_order(self.start)
        self._ordered_end = None if self.end is None else byte_order(self.end)

    @property
    def stop(self) -> str | None:
        """The exclusive end as a range of text keys: just after the key itself for a single key."""
        return self.start + "\0" if self.single else self.end

    def contains(self, key: str) -> bool:
        if self.single:
            return key == self.start
        ordered = byte_order(key)
        return self._ordered_start <= ordered and (self._ordered_end is None or ordered < self._ordered_end)


def kv_from_result(shown: dict[str, Any]) -> kv_pb2.KeyValue:
    """A key-value as the state machine's results show it (kv_to_dict)."""
    return kv_pb2.KeyValue(key=as_bytes(shown["key"]), create_revision=shown["create_revision"],
                           mod_revision=shown["mod_revision"], version=shown["version"],
                           value=value_bytes(shown["value"]), lease=shown.get("lease", 0))


def kv_message(key: str, kv: KeyValue, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=as_bytes(key), create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                           version=kv.version, value=b"" if keys_only else value_bytes(kv.value), lease=kv.lease)
