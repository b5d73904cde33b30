"""Between etcd's bytes and raftkv's text: keys, values, ranges and key-values.

etcd's keys and values are bytes; raftkv's keys are text and its values JSON. A key or value that
comes in over the etcd API must be UTF-8 (it is stored as that text, a JSON string), and goes out
as the same bytes. A value written through raftkv's HTTP API as some other JSON value (a number,
an object) goes out as its compact JSON text. UTF-8 keeps code-point order equal to byte order,
so ranges over text keys are etcd's ranges over the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from raftkv.etcd.errors import EMPTY_KEY, invalid
from raftkv.etcd.pb import kv_pb2
from raftkv.kv import KeyValue

__all__ = ["Bounds", "key_text", "kv_from_result", "kv_message", "value_bytes", "value_text"]

ALL_FROM = b"\0"  # a range_end of "\0" means "every key from key on"; key "\0" too means every key


def key_text(key: bytes, where: str = "key") -> str:
    if not key:
        raise EMPTY_KEY()
    return _text(key, where)


def value_text(value: bytes) -> str:
    return _text(value, "value")


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise invalid(f"etcdserver: raftkv stores text: the {where} must be UTF-8") from None


def value_bytes(value: Any) -> bytes:
    if type(value) is str:
        return value.encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


class Bounds:
    """An etcd key range: one key (`single`), or keys from `start` (inclusive) to `end`
    (exclusive; None: no end)."""

    def __init__(self, key: bytes, range_end: bytes) -> None:
        self.single = not range_end
        if self.single:
            self.start, self.end = key_text(key), None
        else:
            self.start = "" if key == ALL_FROM else _text(key, "key")
            self.end = None if range_end == ALL_FROM else _text(range_end, "range_end")

    @property
    def stop(self) -> str | None:
        """The exclusive end as a range of text keys: just after the key itself for a single key."""
        return self.start + "\0" if self.single else self.end

    def contains(self, key: str) -> bool:
        if self.single:
            return key == self.start
        return self.start <= key and (self.end is None or key < self.end)


def kv_from_result(shown: dict[str, Any]) -> kv_pb2.KeyValue:
    """A key-value as the state machine's results show it (kv_to_dict)."""
    return kv_pb2.KeyValue(key=shown["key"].encode(), create_revision=shown["create_revision"],
                           mod_revision=shown["mod_revision"], version=shown["version"],
                           value=value_bytes(shown["value"]), lease=shown.get("lease", 0))


def kv_message(key: str, kv: KeyValue, keys_only: bool = False) -> kv_pb2.KeyValue:
    return kv_pb2.KeyValue(key=key.encode(), create_revision=kv.create_revision, mod_revision=kv.mod_revision,
                           version=kv.version, value=b"" if keys_only else value_bytes(kv.value), lease=kv.lease)
