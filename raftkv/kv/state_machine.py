"""The replicated key-value state machine: committed log entries in, plain-data results out.

Theory of operation
-------------------
Every replica feeds the same committed entries, in log order, to `apply(index, data)`; the machine
is a pure function of that sequence (no clocks, no randomness, no I/O, no dependence on dict or set
iteration order), so all replicas hold the same state after the same index. That is Raft's State
Machine Safety carried up to the data: `digest()` lets tests check it byte for byte.

State, as in etcd's v3 store but without history: key -> KeyValue(value, create_revision,
mod_revision, version) and one global `revision` that grows by exactly 1 per applied command that
changed something. A txn with several writes is one revision; a failed compare-and-set, a delete
of an absent key and a read-only txn change nothing and take no revision. Deleting a key forgets
it: re-creating it starts again at version 1 with a new create_revision.

Results are plain dicts the HTTP layer can serialise as they are (shapes in `apply`). Failures
that are answers, not errors (a precondition that does not hold, an absent key, a malformed entry)
are results with ok=False and an `error` code; apply never raises for the contents of an entry,
because an exception on one replica and not another would be divergence. Results share value
objects with the store, so callers must treat them (and `get` results) as read-only.

Exactly-once: a command may carry a request_id (the HTTP API's Idempotency-Key). The first use of
an id is remembered with the command's fingerprint (operation, keys and body) and its result, as
msgpack bytes so that nothing a caller does to a returned dict can alter it. A retry (same id,
same fingerprint) gets that first result back, marked `replayed`, and changes nothing. The same id
with a different command is refused (`request_key_reused`, naming what differs) and changes
nothing either: answering it with the first command's result would report as done a write that
never happened. The table is bounded by count (`max_dedup_entries`) and by the bytes of what it
holds (`max_dedup_bytes`: results carry values of up to 1 MiB); eviction is oldest-first in apply
order, which every replica sees identically, so the tables agree too. There is no clock here, so
"how long" an id is remembered is "until that many newer ids or bytes have pushed it out".

Snapshots are canonical msgpack (keys sorted, dedup table in apply order): equal states give equal
bytes, which is what makes `digest()` and `__eq__` meaningful across replicas.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, NamedTuple

import msgpack

from raftkv.core import ConfChange, ConfChangeKind
from raftkv.kv.commands import (
    UNSET,
    Command,
    Compare,
    CompareOp,
    Delete,
    InvalidCommand,
    Put,
    Target,
    Txn,
    TxnDelete,
    TxnGet,
    TxnPut,
    TxnRange,
    decode,
    fingerprint,
    target,
)

Result = dict[str, Any]

# Values of a result's "error" field; the HTTP layer maps them to 412, 404, 422 and 400.
PRECONDITION_FAILED = "precondition_failed"
NOT_FOUND = "not_found"
REQUEST_KEY_REUSED = "request_key_reused"
INVALID = "invalid"

DEFAULT_MAX_DEDUP_ENTRIES = 10_000
DEFAULT_MAX_DEDUP_BYTES = 64 * 1024 * 1024
_DEDUP_ROW_OVERHEAD_BYTES = 100  # what one remembered id costs beyond its strings and result, roughly
_SNAPSHOT_FORMAT = 3  # 1: dedup rows were [id, result], with no fingerprint; 2: no member table


class FirstUse(NamedTuple):
    """What a request_id was first used for. An empty fingerprint (from a format-1 snapshot, which
    did not record it) matches any command, as every reuse was treated before."""

    fingerprint: bytes
    op: str  # "put", "delete" or "txn"
    key: str | None  # the key a put or delete wrote
    index: int  # the log index that first used it
    result: bytes  # msgpack of its result

    def cost_bytes(self, request_id: str) -> int:
        return len(self.result) + len(request_id) + len(self.key or "") + _DEDUP_ROW_OVERHEAD_BYTES


class KeyValue(NamedTuple):
    value: Any
    create_revision: int
    mod_revision: int
    version: int  # number of writes since the key was (re)created; 1 after the first


def kv_to_dict(key: str, kv: KeyValue) -> dict[str, Any]:
    """The JSON shape of one key: {key, value, create_revision, mod_revision, version}."""
    return {"key": key, "value": kv.value, "create_revision": kv.create_revision,
            "mod_revision": kv.mod_revision, "version": kv.version}


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: unlike Python's ==, true is not 1 (numbers still match 1 == 1.0)."""
    ta, tb = type(a), type(b)
    if ta is bool or tb is bool:
        return ta is tb and a is b
    if ta is list:
        return tb is list and len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if ta is dict:
        return tb is dict and a.keys() == b.keys() and all(json_equal(v, b[k]) for k, v in a.items())
    if tb is list or tb is dict:
        return False
    return a == b


def _holds(actual: Any, op: CompareOp, expected: Any) -> bool:
    if op is CompareOp.EQ:
        return json_equal(actual, expected)
    if op is CompareOp.NE:
        return not json_equal(actual, expected)
    # Ordering only between two numbers or two strings; anything else is simply false, not an error.
    num = (int, float)
    ta, te = type(actual), type(expected)
    if not ((ta in num and te in num) or (ta is str and te is str)):
        return False
    return actual > expected if op is CompareOp.GT else actual < expected


def _kind(value: Any) -> str:
    """What an ordering compare sees in a JSON value: a number, a string, or something else."""
    t = type(value)
    if t in (int, float):
        return "a number"
    return "a string" if t is str else "a value that is neither a number nor a string"


_ENCODE_CHUNK_ROWS = 5_000


class KVStateMachine:
    def __init__(self, max_dedup_entries: int = DEFAULT_MAX_DEDUP_ENTRIES,
                 max_dedup_bytes: int = DEFAULT_MAX_DEDUP_BYTES) -> None:
        # All replicas must use the same bounds, or their dedup tables (and so their answers to a
        # retry, and so their states) diverge: they are constants of the product, not options.
        assert max_dedup_entries >= 0 and max_dedup_bytes >= 0
        self.max_dedup_entries = max_dedup_entries
        self.max_dedup_bytes = max_dedup_bytes
        self.revision = 0
        self.applied_index = 0
        self._kvs: dict[str, KeyValue] = {}
        self._dedup: OrderedDict[str, FirstUse] = OrderedDict()
        self._dedup_bytes = 0
        self.members: dict[str, bytes] = {}  # member id -> its details (see apply_membership)
        self.removed_members: set[str] = set()
        # Sorted key index for range(), brought up to date lazily: puts of new keys are frequent and
        # ranges rare, so creations/deletions are queued here and merged on the next range.
        self._sorted_keys: list[str] = []
        self._index_added: set[str] = set()
        self._index_removed: set[str] = set()

    # ---- applying the log ----------------------------------------------------------------------

    def apply(self, index: int, data: bytes) -> Result:
        """Apply the command in a committed entry. Result shapes (all have "ok" and "op"):

        put ok:      {ok, op:"put", key, value, revision, prev: kv|None}
        delete ok:   {ok, op:"delete", key, revision, prev: kv}
        txn:         {ok:True, op:"txn", succeeded, responses:[...], revision}; responses are
                     {op:"put", key, revision, prev}, {op:"delete", key, deleted, prev},
                     {op:"get", key, kv: kv|None}, {op:"range", prefix, items:[kv...], more}
        failed CAS:  {ok:False, error:"precondition_failed", op, key, reason, current: kv|None, revision}
        absent key:  {ok:False, error:"not_found", op:"delete", key, revision}
        reused id:   {ok:False, error:"request_key_reused", op, key, request_id, first_use: {op, key},
                      mismatch: "operation"|"key"|"body", first_index, revision}
        bad entry:   {ok:False, error:"invalid", op:None, message}
        mistyped:    {ok:False, error:"invalid", op:"txn", message}  ('>' or '<' of a number and a string)
        where kv is kv_to_dict(...) and revision is the store's revision after the command.
        A retry of a remembered request_id gets its first result again, with replayed=True.
        """
        self._advance(index)
        try:
            cmd = decode(data)
        except InvalidCommand as exc:
            return {"ok": False, "error": INVALID, "op": None, "message": str(exc)}
        rid = cmd.request_id
        if rid is None:
            return self._execute(cmd)
        mark = fingerprint(cmd)
        first = self._dedup.get(rid)
        if first is not None:
            if first.fingerprint in (mark, b""):
                return {**msgpack.unpackb(first.result), "replayed": True}
            return self._reused(rid, first, cmd)
        result = self._execute(cmd)
        self._remember(rid, FirstUse(mark, *target(cmd), index, msgpack.packb(result)))
        return result

    def _reused(self, rid: str, first: FirstUse, cmd: Command) -> Result:
        op, key = target(cmd)
        mismatch = "operation" if op != first.op else "key" if key != first.key else "body"
        return {"ok": False, "error": REQUEST_KEY_REUSED, "op": op, "key": key, "request_id": rid,
                "first_use": {"op": first.op, "key": first.key}, "mismatch": mismatch,
                "first_index": first.index, "revision": self.revision}

    def _remember(self, rid: str, first: FirstUse) -> None:
        self._dedup[rid] = first
        self._dedup_bytes += first.cost_bytes(rid)
        self._evict_dedup()

    def _evict_dedup(self) -> None:
        table = self._dedup
        while table and (len(table) > self.max_dedup_entries or self._dedup_bytes > self.max_dedup_bytes):
            rid, first = table.popitem(last=False)
            self._dedup_bytes -= first.cost_bytes(rid)

    def dedup_stats(self) -> dict[str, int | None]:
        """How much the request-id table holds, and the log index of its oldest id (None: empty)."""
        oldest = next(iter(self._dedup.values()), None)
        return {"requestKeys": len(self._dedup), "bytes": self._dedup_bytes,
                "oldestIndex": None if oldest is None else oldest.index,
                "maxRequestKeys": self.max_dedup_entries, "maxBytes": self.max_dedup_bytes}

    def apply_noop(self, index: int) -> None:
        """Record an entry that is not a command (a leader's no-op)."""
        self._advance(index)

    def apply_membership(self, index: int, change: ConfChange) -> Result:
        """Record a committed membership change in the member table: member id -> the details the
        node layer put in the change's context (name, addresses), kept opaque here. A promotion
        (ADD_VOTER with no context) keeps the details it had. The table travels in snapshots, so
        a node that joins late learns every member's address from its first snapshot or the log.
        Removed ids are remembered (`removed_members`), as etcd does, so that a node still running
        under a removed id can be told so: ids are never reused, so that answer is final.

        result: {ok:True, op:"member", kind, id, revision}"""
        self._advance(index)
        if change.kind is ConfChangeKind.REMOVE:
            self.members.pop(change.node_id, None)
            self.removed_members.add(change.node_id)
        elif change.context:
            self.members[change.node_id] = change.context
        return {"ok": True, "op": "member", "kind": change.kind.value, "id": change.node_id, "revision": self.revision}

    def _advance(self, index: int) -> None:
        # Re-applying or going back is a driver bug that would corrupt state: refuse loudly.
        if type(index) is not int or index <= self.applied_index:
            raise ValueError(f"apply index {index!r} is not after applied index {self.applied_index}")
        self.applied_index = index

    def _execute(self, cmd: Command) -> Result:
        if type(cmd) is Put:
            return self._put(cmd)
        if type(cmd) is Delete:
            return self._delete(cmd)
        assert type(cmd) is Txn
        return self._txn(cmd)

    def _put(self, cmd: Put) -> Result:
        key = cmd.key
        cur = self._kvs.get(key)
        reason = self._check_preconditions(cur, cmd)
        if reason is not None:
            return self._precondition_failed("put", key, cur, reason)
        self.revision += 1
        self._write(key, cmd.value, cur, self.revision)
        return {"ok": True, "op": "put", "key": key, "value": cmd.value, "revision": self.revision,
                "prev": None if cur is None else kv_to_dict(key, cur)}

    @staticmethod
    def _check_preconditions(cur: KeyValue | None, cmd: Put) -> str | None:
        if cmd.prev_exist is False and cur is not None:
            return "key already exists (prev_exist=false)"
        if cmd.prev_exist is True and cur is None:
            return "key does not exist (prev_exist=true)"
        if cmd.prev_revision is not None and (0 if cur is None else cur.mod_revision) != cmd.prev_revision:
            return "mod_revision does not match prev_revision"
        if cmd.prev_value is not UNSET and (cur is None or not json_equal(cur.value, cmd.prev_value)):
            return "value does not match prev_value"
        return None

    def _delete(self, cmd: Delete) -> Result:
        key = cmd.key
        cur = self._kvs.get(key)
        if cur is None:
            return {"ok": False, "error": NOT_FOUND, "op": "delete", "key": key, "revision": self.revision}
        if cmd.prev_revision is not None and cur.mod_revision != cmd.prev_revision:
            return self._precondition_failed("delete", key, cur, "mod_revision does not match prev_revision")
        self.revision += 1
        self._remove(key)
        return {"ok": True, "op": "delete", "key": key, "revision": self.revision,
                "prev": kv_to_dict(key, cur)}

    def _precondition_failed(self, op: str, key: str, cur: KeyValue | None, reason: str) -> Result:
        return {"ok": False, "error": PRECONDITION_FAILED, "op": op, "key": key, "reason": reason,
                "current": None if cur is None else kv_to_dict(key, cur), "revision": self.revision}

    def _txn(self, cmd: Txn) -> Result:
        # Compares all see the state before the txn; ops then run in order, and a read sees the
        # writes before it in the same txn. Validation already passed, so no op can fail midway:
        # the branch is applied whole, which is what makes the txn atomic.
        if cmd.typed_compares and (mistyped := self._mistyped_compare(cmd.compare)) is not None:
            return {"ok": False, "error": INVALID, "op": "txn", "message": mistyped}
        succeeded = all(self._compare(c) for c in cmd.compare)
        rev = self.revision + 1  # every write in this txn carries the same revision
        changed = False
        responses: list[Result] = []
        for op in cmd.success if succeeded else cmd.failure:
            t = type(op)
            if t is TxnPut:
                cur = self._kvs.get(op.key)
                self._write(op.key, op.value, cur, rev)
                changed = True
                responses.append({"op": "put", "key": op.key, "revision": rev,
                                  "prev": None if cur is None else kv_to_dict(op.key, cur)})
            elif t is TxnDelete:
                cur = self._kvs.get(op.key)
                if cur is not None:
                    self._remove(op.key)
                    changed = True
                responses.append({"op": "delete", "key": op.key, "deleted": cur is not None,
                                  "prev": None if cur is None else kv_to_dict(op.key, cur)})
            elif t is TxnGet:
                cur = self._kvs.get(op.key)
                responses.append({"op": "get", "key": op.key,
                                  "kv": None if cur is None else kv_to_dict(op.key, cur)})
            else:
                assert t is TxnRange
                items, more = self.range(op.prefix, op.limit)
                responses.append({"op": "range", "prefix": op.prefix,
                                  "items": [kv_to_dict(k, kv) for k, kv in items], "more": more})
        if changed:
            self.revision = rev
        return {"ok": True, "op": "txn", "succeeded": succeeded, "responses": responses,
                "revision": self.revision}

    def _mistyped_compare(self, compares: tuple[Compare, ...]) -> str | None:
        """Why an ordering compare cannot be evaluated: a number against a string (or the reverse)."""
        for i, c in enumerate(compares):
            if c.target is not Target.VALUE or c.op not in (CompareOp.GT, CompareOp.LT):
                continue
            kv = self._kvs.get(c.key)
            if kv is not None and _kind(kv.value) != _kind(c.value):
                return (f"compare[{i}]: key {c.key!r} holds {_kind(kv.value)}, which '{c.op}' cannot compare with "
                        f"{_kind(c.value)}; nothing was done")
        return None

    def _compare(self, c: Compare) -> bool:
        kv = self._kvs.get(c.key)
        if c.target is Target.EXISTS:
            return _holds(kv is not None, c.op, c.value)
        if c.target is Target.VALUE:
            return kv is not None and _holds(kv.value, c.op, c.value)
        actual = 0 if kv is None else getattr(kv, c.target.value)
        return _holds(actual, c.op, c.value)

    def _write(self, key: str, value: Any, cur: KeyValue | None, rev: int) -> None:
        if cur is None:
            self._kvs[key] = KeyValue(value, rev, rev, 1)
            if key in self._index_removed:
                self._index_removed.discard(key)  # still in _sorted_keys
            else:
                self._index_added.add(key)
        else:
            self._kvs[key] = KeyValue(value, cur.create_revision, rev, cur.version + 1)

    def _remove(self, key: str) -> None:
        del self._kvs[key]
        if key in self._index_added:
            self._index_added.discard(key)  # never reached _sorted_keys
        else:
            self._index_removed.add(key)

    # ---- reads (local state; linearizability is the caller's job, via ReadIndex) ----------------

    def get(self, key: str) -> KeyValue | None:
        return self._kvs.get(key)

    def range(self, prefix: str = "", limit: int | None = None, start: str = "",
              end: str | None = None) -> tuple[list[tuple[str, KeyValue]], bool]:
        """Keys starting with prefix, from start (inclusive) to end (exclusive; None: no end), in
        sorted order, at most limit of them (None: all), and whether more keys matched than were
        returned (etcd's key and range_end, for paging through a large prefix)."""
        keys = self._sorted()
        items: list[tuple[str, KeyValue]] = []
        i = bisect_left(keys, max(prefix, start))
        n = len(keys)
        while i < n and keys[i].startswith(prefix) and (end is None or keys[i] < end):
            if limit is not None and len(items) >= limit:
                return items, True
            items.append((keys[i], self._kvs[keys[i]]))
            i += 1
        return items, False

    def _sorted(self) -> list[str]:
        if self._index_removed:
            removed = self._index_removed
            self._sorted_keys = [k for k in self._sorted_keys if k not in removed]
            self._index_removed = set()
        if self._index_added:
            # Timsort merges the sorted run with the sorted additions in linear time.
            self._sorted_keys += sorted(self._index_added)
            self._sorted_keys.sort()
            self._index_added = set()
        return self._sorted_keys

    def __len__(self) -> int:
        return len(self._kvs)

    # ---- snapshots and comparison --------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, canonically: equal states give equal bytes."""
        return self.snapshot_later()()

    def snapshot_later(self) -> Callable[[], bytes]:
        """Freeze the current state cheaply; the returned function encodes it, on any thread.

        Values are immutable KeyValue tuples, so shallow copies of the containers are a
        consistent image while applying goes on; the expensive encoding can then run off the
        event loop (a million keys take seconds to encode, far longer than an election timeout).
        """
        kvs, dedup, members = dict(self._kvs), list(self._dedup.items()), sorted(self.members.items())
        removed = sorted(self.removed_members)
        applied_index, revision = self.applied_index, self.revision

        def encode() -> bytes:
            # Byte-for-byte what packb of the whole list gives, packed in chunks: one packb of a
            # million rows is a single C call that holds the GIL (and so the node's loop) for it all.
            packer = msgpack.Packer()
            keys = sorted(kvs)
            parts = [packer.pack_array_header(7), packer.pack(_SNAPSHOT_FORMAT), packer.pack(applied_index),
                     packer.pack(revision), packer.pack_array_header(len(keys))]
            for lo in range(0, len(keys), _ENCODE_CHUNK_ROWS):
                parts.append(b"".join(packer.pack([k, *kvs[k]]) for k in keys[lo : lo + _ENCODE_CHUNK_ROWS]))
            parts.append(packer.pack([[rid, *first] for rid, first in dedup]))
            parts.append(packer.pack([list(m) for m in members]))
            parts.append(packer.pack(removed))
            return b"".join(parts)

        return encode

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; raises ValueError if data is not one."""
        try:
            fmt, applied_index, revision, items, dedup, *rest = msgpack.unpackb(data)
            if fmt not in (1, 2, _SNAPSHOT_FORMAT) or len(rest) != 2 * (fmt == _SNAPSHOT_FORMAT):
                raise ValueError(f"unknown snapshot format {fmt!r} with {5 + len(rest)} fields")
            member_rows, removed = rest if rest else ([], [])
            members = {member_id: details for member_id, details in member_rows}
            if not all(type(m) is str and type(d) is bytes for m, d in members.items()):
                raise ValueError("malformed member table")
            if not all(type(m) is str for m in removed):
                raise ValueError("malformed removed-member list")
            make = KeyValue._make
            kvs = {row[0]: make(row[1:]) for row in items}  # a row of the wrong length raises TypeError
            if fmt == 1:  # written before fingerprints: any reuse of these ids counts as a retry
                table = OrderedDict((rid, FirstUse(b"", "", None, 0, result)) for rid, result in dedup)
            else:
                table = OrderedDict((row[0], FirstUse._make(row[1:])) for row in dedup)
            if not all(type(r) is str and type(f.result) is bytes and type(f.fingerprint) is bytes
                       for r, f in table.items()):
                raise ValueError("malformed dedup table")
        except Exception as exc:
            raise ValueError(f"not a KV snapshot: {exc}") from exc
        self.applied_index, self.revision = applied_index, revision
        self._kvs, self._dedup, self.members, self.removed_members = kvs, table, members, set(removed)
        self._dedup_bytes = sum(first.cost_bytes(rid) for rid, first in table.items())
        self._evict_dedup()
        self._sorted_keys = sorted(kvs)
        self._index_added, self._index_removed = set(), set()

    def digest(self) -> str:
        """A stable hash of the whole state (sha256 of the snapshot), for comparing replicas."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStateMachine):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"KVStateMachine(keys={len(self._kvs)}, revision={self.revision}, "
                f"applied_index={self.applied_index}, dedup={len(self._dedup)})")
