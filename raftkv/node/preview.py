"""The preview of the state machine that a node's status event carries to the dashboard.

Each status event (four a second) carries a preview of the state machine, bounded in bytes so that
one large value cannot make every status event, and everything that keeps them, large: at most
`MAX_PREVIEW_KEYS` keys and `MAX_PREVIEW_BYTES` of keys and values together; a value whose JSON
text is longer than `MAX_PREVIEW_VALUE_BYTES` is shown as the start of that text and its full size
(a reader fetches the whole value with `GET /kv/{key}` when a person asks for it).

A store of more keys than that shows the keys written last, newest first into the byte budget, and
says so (`newest`): after a load run has written thousands of keys, the one a person just wrote is
the one to see land on every node. Those are found among the newest `PREVIEW_LOOK_BACK` changes;
when fewer than `MAX_PREVIEW_KEYS` keys are found there (one key written over and over, or history
compacted away) the first keys in key order fill the rest.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from raftkv.kv import KeyValue, KVStateMachine

MAX_PREVIEW_KEYS = 50
MAX_PREVIEW_VALUE_BYTES = 256
MAX_PREVIEW_BYTES = 8 * 1024
PREVIEW_LOOK_BACK = 20 * MAX_PREVIEW_KEYS


class _ShownValue(NamedTuple):
    """How the preview shows one key's value; valid while the key's mod_revision is unchanged."""

    mod_revision: int
    preview_bytes: int  # what showing it adds to the preview, key included
    truncated: dict[str, Any] | None  # {"head", "bytes"} when the value is too long to show whole


class KVPreview:
    """Previews of one state machine. Measuring a 1 MiB value means encoding it (~3.5 ms): the
    preview remembers how it showed each key, so that happens once per write of the key, not four
    times a second."""

    def __init__(self, kv: KVStateMachine) -> None:
        self.kv = kv
        self._shown_before: dict[str, _ShownValue] = {}

    def __call__(self) -> dict[str, Any]:
        """{"items": {key: value} shown whole, "truncated": {key: {"head": the first bytes of its
        JSON text, "bytes": the size of all of it}}, "more": whether keys were left out, "newest":
        whether the keys are those written last rather than the first in key order, "count": keys}."""
        kv = self.kv
        newest = len(kv) > MAX_PREVIEW_KEYS
        entries, more = (_newest_entries(kv), True) if newest else kv.range("", MAX_PREVIEW_KEYS)
        shown: dict[str, _ShownValue] = {}
        items: dict[str, Any] = {}
        truncated: dict[str, dict[str, Any]] = {}
        budget_bytes = MAX_PREVIEW_BYTES
        for key, entry in entries:
            value = self._shown_before.get(key)
            if value is None or value.mod_revision != entry.mod_revision:
                value = _shown_value(key, entry)
            shown[key] = value  # kept even if it does not fit, so it is not measured again next time
            if value.preview_bytes > budget_bytes:
                more = True
                break
            budget_bytes -= value.preview_bytes
            if value.truncated is None:
                items[key] = entry.value
            else:
                truncated[key] = value.truncated
        self._shown_before = shown
        return {"items": items, "truncated": truncated, "more": more, "newest": newest, "count": len(kv)}


def _newest_entries(kv: KVStateMachine) -> list[tuple[str, KeyValue]]:
    """MAX_PREVIEW_KEYS of a store that holds more: those written last, newest first, then the
    first in key order if too few were found among the newest changes."""
    entries = []
    for key in kv.store.recently_changed(MAX_PREVIEW_KEYS, PREVIEW_LOOK_BACK):
        entry = kv.get(key)
        assert entry is not None, f"{key!r}, found among the current keys, holds no value"
        entries.append((key, entry))
    if len(entries) < MAX_PREVIEW_KEYS:
        found = {key for key, _ in entries}
        first, _ = kv.range("", MAX_PREVIEW_KEYS)
        entries += [(key, entry) for key, entry in first if key not in found][: MAX_PREVIEW_KEYS - len(entries)]
    return entries


def _shown_value(key: str, entry: KeyValue) -> _ShownValue:
    text = _json_bytes(entry.value)
    key_bytes = len(_json_bytes(key)) + 2  # with its colon and the comma after the value
    if len(text) <= MAX_PREVIEW_VALUE_BYTES:
        return _ShownValue(entry.mod_revision, key_bytes + len(text), None)
    head = text[:MAX_PREVIEW_VALUE_BYTES].decode(errors="ignore")  # a character cut in two is left out
    truncated = {"head": head, "bytes": len(text)}
    return _ShownValue(entry.mod_revision, key_bytes + len(_json_bytes(truncated)), truncated)


def _json_bytes(value: Any) -> bytes:
    # surrogatepass: a string's escaped bytes (raftkv/byte_text.py) are measured, not refused
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
