"""The replicated key-value state machine: committed log entries in, plain-data results out.

Theory of operation
-------------------
Every replica feeds the same committed entries, in log order, to `apply(index, data)`; the machine
is a pure function of that sequence (no clocks, no randomness, no I/O, no dependence on dict or set
iteration order), so all replicas hold the same state after the same index. That is Raft's State
Machine Safety carried up to the data: `digest()` lets tests check it byte for byte.

State, as in etcd's v3 store: a multi-version key store (mvcc.py: key -> KeyValue(value,
create_revision, mod_revision, version, lease), and each key's past versions back to the compacted
revision) and one global `revision` that grows by exactly 1 per applied command that changed
something. A txn with several writes is one revision; a failed compare-and-set, a delete of an
absent key and a read-only txn change nothing and take no revision. Deleting a key ends it: re-
creating it starts again at version 1 with a new create_revision. Leases (leases.py) own keys;
revoking a lease deletes its keys in one revision. Compaction (a command in the log) forgets
history at or below a revision, on every replica at the same index.

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
import heapq
from collections import OrderedDict
from collections.abc import Generator, Iterable, Iterator
from itertools import groupby, islice
from operator import itemgetter
from typing import Any, NamedTuple

import msgpack

from raftkv.byte_text import ESCAPES, packb, unpackb
from raftkv.core import ConfChange, ConfChangeKind
from raftkv.kv.auth import AuthState
from raftkv.kv.commands import (
    UNSET,
    AsUser,
    AuthChange,
    Command,
    Compact,
    Compare,
    CompareOp,
    Delete,
    FoundStore,
    InvalidCommand,
    LeaseGrant,
    LeaseRevoke,
    PublishMember,
    Put,
    Target,
    Txn,
    TxnDelete,
    TxnDeleteRange,
    TxnGet,
    TxnOp,
    TxnPut,
    TxnRange,
    decode,
    fingerprint,
    target,
)
from raftkv.kv.leases import LeaseTable
from raftkv.kv.mvcc import KeyValue, MVCCStore, checked_row

Result = dict[str, Any]

# Values of a result's "error" field; the HTTP layer maps them to 412, 404, 422 and 400.
PRECONDITION_FAILED = "precondition_failed"
NOT_FOUND = "not_found"
REQUEST_KEY_REUSED = "request_key_reused"
INVALID = "invalid"
AUTH_CHANGED = "auth_changed"  # a write on a user's behalf whose permission check is out of date
REFUSED = "refused"  # an auth change that cannot be made (a user that exists already, ...)

DEFAULT_MAX_DEDUP_ENTRIES = 10_000
DEFAULT_MAX_DEDUP_BYTES = 64 * 1024 * 1024
_DEDUP_ROW_OVERHEAD_BYTES = 100  # what one remembered id costs beyond its strings and result, roughly
_SNAPSHOT_FORMAT = 5
# Fields of each format: 1 had dedup rows [id, result] with no fingerprint; 2 no member table; 3 no
# history, compaction or leases (and rows without a lease); 4 no auth state.
_SNAPSHOT_FIELDS = {1: 5, 2: 5, 3: 7, 4: 10, 5: 11}

# What only a client asks for: while auth is on, each must come wrapped (AsUser) with its user.
_CLIENT_COMMANDS = frozenset({Put, Delete, Txn, AuthChange})

# A request_id as remembered: as sent, or (user, request_id) for a write on a user's behalf.
DedupKey = str | tuple[str, str]


class FirstUse(NamedTuple):
    """What a request_id was first used for. An empty fingerprint (from a format-1 snapshot, which
    did not record it) matches any command, as every reuse was treated before."""

    fingerprint: bytes
    op: str  # "put", "delete" or "txn"
    key: str | None  # the key a put or delete wrote
    index: int  # the log index that first used it
    result: bytes  # msgpack of its result

    def cost_bytes(self, request_id: DedupKey) -> int:
        id_chars = len(request_id) if type(request_id) is str else sum(map(len, request_id))
        return len(self.result) + id_chars + len(self.key or "") + _DEDUP_ROW_OVERHEAD_BYTES


def kv_to_dict(key: str, kv: KeyValue) -> dict[str, Any]:
    """The JSON shape of one key: {key, value, create_revision, mod_revision, version, lease?}."""
    shown = {"key": key, "value": kv.value, "create_revision": kv.create_revision,
             "mod_revision": kv.mod_revision, "version": kv.version}
    if kv.lease:
        shown["lease"] = kv.lease
    return shown


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


SNAPSHOT_PART_ROWS = 250  # keys, or versions of the history, packed per part: about 0.2-0.5 ms
SORT_RUN_KEYS = 50_000  # keys sorted per part of a snapshot, then merged as it is packed: ~20-40 ms


def _sorted_between_parts(keys: Iterable[str]) -> Generator[bytes, None, Iterator[str]]:
    """Sorts `keys` a run of `SORT_RUN_KEYS` per empty part (a turn of the loop packing a
    snapshot; the image grew by a run) and returns them in order, each once, the runs merged as
    they are read: one sort of a million keys held a node's loop for 0.2-0.4 s (bench/PROFILE.md).
    """
    unsorted, runs = iter(keys), []
    while run := sorted(islice(unsorted, SORT_RUN_KEYS)):
        runs.append(run)
        yield b""
    return map(itemgetter(0), groupby(heapq.merge(*runs)))


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
        self.store = MVCCStore()
        self.leases = LeaseTable()
        self.auth = AuthState()
        self._dedup: OrderedDict[DedupKey, FirstUse] = OrderedDict()
        self._dedup_bytes = 0
        self.members: dict[str, bytes] = {}  # member id -> its details (see apply_membership)
        self.member_details_changed = 0  # how many PublishMember commands applied (a node re-reads its peers)
        self.removed_members: set[str] = set()

    # ---- applying the log ----------------------------------------------------------------------

    def apply(self, index: int, data: bytes, *, answer: bool = True) -> Result | None:
        """Apply the command in a committed entry. With answer=False nobody waits for its result
        (a replica applying another node's write): a successful put then builds none and returns
        None, since two dicts per write on every replica cost its apply about a tenth
        (bench/PROFILE.md). The state changes the same either way. Result shapes (all have "ok"
        and "op"):

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
        publish:     {ok:True, op:"publish_member", id, revision} (a member's details filled in); refused:
                     {ok:False, error:"precondition_failed", op:"publish_member", id, reason, revision}
        founding:    {ok:True, op:"found_store", revision: 1} (a new cluster's store starts at etcd's first
                     revision); refused past revision 0: {ok:False, error:"precondition_failed", ...}
        auth change: {ok:True, op:"auth", change, authRevision}; refused: {ok:False, error:"refused" or
                     "not_found" (a user or role it names does not exist), op:"auth", change, message}
        stale check: {ok:False, error:"auth_changed", op, authRevision, revision} (an AsUser checked at an
                     older auth revision: nothing done, check the permission again)
        mistyped:    {ok:False, error:"invalid", op:"txn", message}  ('>' or '<' of a number and a string)
        where kv is kv_to_dict(...) and revision is the store's revision after the command.
        A retry of a remembered request_id gets its first result again, with replayed=True.
        """
        self._advance(index)
        try:
            cmd = decode(data)
        except InvalidCommand as exc:
            return {"ok": False, "error": INVALID, "op": None, "message": str(exc)}
        rid: DedupKey | None = cmd.request_id
        if type(cmd) is AsUser:
            if cmd.auth_revision != self.auth.revision:
                return {"ok": False, "error": AUTH_CHANGED, "op": target(cmd)[0], "authRevision": self.auth.revision,
                        "revision": self.revision}
            rid = None if rid is None else (cmd.user, rid)
            cmd = cmd.command
        elif self.auth.enabled and type(cmd) in _CLIENT_COMMANDS:
            # Let through unchecked by a node that had not learnt auth was on: refused untouched.
            return {"ok": False, "error": AUTH_CHANGED, "op": target(cmd)[0], "authRevision": self.auth.revision,
                    "revision": self.revision}
        if rid is None:
            return self._execute(cmd, answer)
        mark = fingerprint(cmd)
        first = self._dedup.get(rid)
        if first is not None:
            if first.fingerprint in (mark, b""):
                return {**unpackb(first.result), "replayed": True}
            return self._reused(cmd, first)
        result = self._execute(cmd, answer=True)  # kept for a retry, whoever waits now
        assert result is not None
        self._remember(rid, FirstUse(mark, *target(cmd), index, packb(result)))
        return result

    def _reused(self, cmd: Command, first: FirstUse) -> Result:
        rid = cmd.request_id
        op, key = target(cmd)
        mismatch = "operation" if op != first.op else "key" if key != first.key else "body"
        return {"ok": False, "error": REQUEST_KEY_REUSED, "op": op, "key": key, "request_id": rid,
                "first_use": {"op": first.op, "key": first.key}, "mismatch": mismatch,
                "first_index": first.index, "revision": self.revision}

    def _remember(self, rid: DedupKey, first: FirstUse) -> None:
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

    def _publish_member(self, cmd: PublishMember) -> Result:
        """New details for a member (see PublishMember): only while the table still holds the record
        they were made from. Changes no key, so no revision.

        result: {ok:True, op:"publish_member", id, revision}; else {ok:False, error:"precondition_failed", ...}"""
        if self.members.get(cmd.member_id) != cmd.expected:
            return {"ok": False, "error": PRECONDITION_FAILED, "op": "publish_member", "id": cmd.member_id,
                    "reason": "the member is not in the table with the details expected", "revision": self.revision}
        self.members[cmd.member_id] = cmd.details
        self.member_details_changed += 1
        return {"ok": True, "op": "publish_member", "id": cmd.member_id, "revision": self.revision}

    def _found_store(self) -> Result:
        """An empty store at revision 0 moves to revision 1, etcd's first (see FoundStore); any
        other store is left as it is.

        result: {ok:True, op:"found_store", revision}; else {ok:False, error:"precondition_failed", ...}"""
        if self.revision != 0:
            return {"ok": False, "error": PRECONDITION_FAILED, "op": "found_store",
                    "reason": "the store is past revision 0", "revision": self.revision}
        self.revision = 1
        return {"ok": True, "op": "found_store", "revision": self.revision}

    def _advance(self, index: int) -> None:
        # Re-applying or going back is a driver bug that would corrupt state: refuse loudly.
        if type(index) is not int or index <= self.applied_index:
            raise ValueError(f"apply index {index!r} is not after applied index {self.applied_index}")
        self.applied_index = index

    def _execute(self, cmd: Command, answer: bool) -> Result | None:
        if type(cmd) is Put:
            return self._put(cmd, answer)
        if type(cmd) is Delete:
            return self._delete(cmd)
        if type(cmd) is Txn:
            return self._txn(cmd)
        if type(cmd) is Compact:
            return self._compact(cmd)
        if type(cmd) is LeaseGrant:
            return self._lease_grant(cmd)
        if type(cmd) is AuthChange:
            return self._auth_change(cmd)
        if type(cmd) is PublishMember:
            return self._publish_member(cmd)
        if type(cmd) is FoundStore:
            return self._found_store()
        assert type(cmd) is LeaseRevoke
        return self._lease_revoke(cmd)

    def _auth_change(self, cmd: AuthChange) -> Result:
        refusal = self.auth.apply(cmd.op, cmd.name, cmd.role, cmd.password_hash, cmd.permission, cmd.token_key)
        if refusal is not None:
            return {"ok": False, "error": NOT_FOUND if refusal.missing else REFUSED, "op": "auth",
                    "change": cmd.op.value, "message": refusal.message, "authRevision": self.auth.revision,
                    "revision": self.revision}
        return {"ok": True, "op": "auth", "change": cmd.op.value, "authRevision": self.auth.revision,
                "revision": self.revision}

    def _put(self, cmd: Put, answer: bool) -> Result | None:
        key = cmd.key
        cur = self.store.get(key)
        if cmd.lease and cmd.lease not in self.leases:
            return {"ok": False, "error": NOT_FOUND, "op": "put", "key": key, "lease": cmd.lease,
                    "message": f"lease {cmd.lease} does not exist (it expired, was revoked or never granted)",
                    "revision": self.revision}
        reason = self._check_preconditions(cur, cmd)
        if reason is not None:
            return self._precondition_failed("put", key, cur, reason)
        self.revision += 1
        self._write(key, cmd.value, cur, self.revision, cmd.lease)
        if not answer:
            return None
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
        cur = self.store.get(key)
        if cur is None:
            return {"ok": False, "error": NOT_FOUND, "op": "delete", "key": key, "revision": self.revision}
        if cmd.prev_revision is not None and cur.mod_revision != cmd.prev_revision:
            return self._precondition_failed("delete", key, cur, "mod_revision does not match prev_revision")
        self.revision += 1
        self._remove(key, self.revision)
        return {"ok": True, "op": "delete", "key": key, "revision": self.revision,
                "prev": kv_to_dict(key, cur)}

    def _precondition_failed(self, op: str, key: str, cur: KeyValue | None, reason: str) -> Result:
        return {"ok": False, "error": PRECONDITION_FAILED, "op": op, "key": key, "reason": reason,
                "current": None if cur is None else kv_to_dict(key, cur), "revision": self.revision}

    def read_txn(self, cmd: Txn) -> Result:
        """The result of a txn whose ops only read (gets and ranges), from the state as it is now;
        nothing changes and no entry is applied. etcd answers such a txn as a read: after a read
        barrier, this is what applying it at that point of the log would have answered."""
        assert all(type(op) is TxnGet or type(op) is TxnRange for op in (*cmd.success, *cmd.failure)), cmd
        return self._txn(cmd)

    def _txn(self, cmd: Txn) -> Result:
        # Compares all see the state before the txn; ops then run in order, and a read sees the
        # writes before it in the same txn. Validation already passed, so no op can fail midway:
        # the branch is applied whole, which is what makes the txn atomic.
        if cmd.typed_compares and (mistyped := self._mistyped_compare(cmd.compare)) is not None:
            return {"ok": False, "error": INVALID, "op": "txn", "message": mistyped}
        succeeded = all(self._compare(c) for c in cmd.compare)
        branch = cmd.success if succeeded else cmd.failure
        if (missing := self._missing_lease(branch)) is not None:
            return {"ok": False, "error": NOT_FOUND, "op": "txn", "lease": missing, "revision": self.revision,
                    "message": f"lease {missing} does not exist (it expired, was revoked or never granted)"}
        rev = self.revision + 1  # every write in this txn carries the same revision
        changed = False
        responses: list[Result] = []
        for op in branch:
            t = type(op)
            if t is TxnPut:
                cur = self.store.get(op.key)
                self._write(op.key, op.value, cur, rev, op.lease)
                changed = True
                responses.append({"op": "put", "key": op.key, "revision": rev,
                                  "prev": None if cur is None else kv_to_dict(op.key, cur)})
            elif t is TxnDelete:
                cur = self.store.get(op.key)
                if cur is not None:
                    self._remove(op.key, rev)
                    changed = True
                responses.append({"op": "delete", "key": op.key, "deleted": cur is not None,
                                  "prev": None if cur is None else kv_to_dict(op.key, cur)})
            elif t is TxnDeleteRange:
                doomed, _ = self.range("", None, op.start, op.end)
                for key, _kv in doomed:
                    self._remove(key, rev)
                changed = changed or bool(doomed)
                responses.append({"op": "delete_range", "start": op.start, "end": op.end,
                                  "prevs": [kv_to_dict(k, kv) for k, kv in doomed]})
            elif t is TxnGet:
                cur = self.store.get(op.key)
                responses.append({"op": "get", "key": op.key,
                                  "kv": None if cur is None else kv_to_dict(op.key, cur)})
            else:
                assert t is TxnRange
                items, more = self.range(op.prefix, op.limit, op.start, op.end)
                responses.append({"op": "range", "prefix": op.prefix,
                                  "items": [kv_to_dict(k, kv) for k, kv in items], "more": more})
        if changed:
            self.revision = rev
        return {"ok": True, "op": "txn", "succeeded": succeeded, "responses": responses,
                "revision": self.revision}

    def _missing_lease(self, ops: tuple[TxnOp, ...]) -> int | None:
        """A lease that a put of the branch names and that does not exist (checked before any op
        runs, so a txn either applies whole or not at all)."""
        return next((op.lease for op in ops if type(op) is TxnPut and op.lease and op.lease not in self.leases), None)

    def _mistyped_compare(self, compares: tuple[Compare, ...]) -> str | None:
        """Why an ordering compare cannot be evaluated: a number against a string (or the reverse)."""
        for i, c in enumerate(compares):
            if c.target is not Target.VALUE or c.op not in (CompareOp.GT, CompareOp.LT):
                continue
            kv = self.store.get(c.key)
            if kv is not None and _kind(kv.value) != _kind(c.value):
                return (f"compare[{i}]: key {c.key!r} holds {_kind(kv.value)}, which '{c.op}' cannot compare with "
                        f"{_kind(c.value)}; nothing was done")
        return None

    def _compare(self, c: Compare) -> bool:
        kv = self.store.get(c.key)
        if c.target is Target.EXISTS:
            return _holds(kv is not None, c.op, c.value)
        if c.target is Target.VALUE:
            return kv is not None and _holds(kv.value, c.op, c.value)
        actual = 0 if kv is None else getattr(kv, c.target.value)
        return _holds(actual, c.op, c.value)

    def _write(self, key: str, value: Any, cur: KeyValue | None, rev: int, lease: int) -> None:
        if cur is None:
            self.store.put(key, (value, rev, rev, 1, lease))  # KeyValue's fields (mvcc.Row)
        else:
            self.store.put(key, (value, cur.create_revision, rev, cur.version + 1, lease))
        if lease or (cur is not None and cur.lease):
            self.leases.attach(key, lease)

    def _remove(self, key: str, rev: int) -> None:
        self.store.delete(key, rev)
        self.leases.detach(key)

    def compaction_refused(self, revision: int) -> Result | None:
        """The answer refusing a compaction to `revision` in this state, or None if it may go."""
        if revision > self.revision:
            return {"ok": False, "error": INVALID, "op": "compact", "revision": self.revision,
                    "message": f"revision {revision} is in the future (the store is at {self.revision})"}
        return None

    def _compact(self, cmd: Compact) -> Result:
        refused = self.compaction_refused(cmd.revision)
        if refused is not None:
            return refused
        if cmd.revision <= self.store.compacted:  # compacted there already: nothing to do
            return {"ok": True, "op": "compact", "compacted": self.store.compacted, "dropped": 0,
                    "revision": self.revision}
        dropped = self.store.compact(cmd.revision)
        return {"ok": True, "op": "compact", "compacted": cmd.revision, "dropped": dropped,
                "revision": self.revision}

    def _lease_grant(self, cmd: LeaseGrant) -> Result:
        if cmd.lease_id in self.leases:
            return {"ok": False, "error": INVALID, "op": "lease_grant", "revision": self.revision,
                    "message": f"lease {cmd.lease_id} exists already"}
        self.leases.grant(cmd.lease_id, cmd.ttl_s, self.revision)
        return {"ok": True, "op": "lease_grant", "lease": cmd.lease_id, "ttl": cmd.ttl_s, "revision": self.revision}

    def _lease_revoke(self, cmd: LeaseRevoke) -> Result:
        """End the lease: its keys are deleted, all in one revision (none if it held no key)."""
        if cmd.lease_id not in self.leases:
            return {"ok": False, "error": NOT_FOUND, "op": "lease_revoke", "lease": cmd.lease_id,
                    "message": f"lease {cmd.lease_id} does not exist", "revision": self.revision}
        keys = sorted(self.leases.revoke(cmd.lease_id).keys)
        if keys:
            self.revision += 1
            for key in keys:
                self.store.delete(key, self.revision)
        return {"ok": True, "op": "lease_revoke", "lease": cmd.lease_id, "expired": cmd.expired, "deleted": keys,
                "revision": self.revision}

    # ---- reads (local state; linearizability is the caller's job, via ReadIndex) ----------------

    def get(self, key: str) -> KeyValue | None:
        return self.store.get(key)

    def range(self, prefix: str = "", limit: int | None = None, start: str = "", end: str | None = None,
              revision: int | None = None) -> tuple[list[tuple[str, KeyValue]], bool]:
        """Keys starting with prefix, from start (inclusive) to end (exclusive; None: no end), in
        sorted order, as at `revision` (None: now), at most limit of them (None: all), and whether
        more keys matched than were returned (etcd's key and range_end, for paging)."""
        return self.store.range(prefix, limit, start, end, revision)

    def __len__(self) -> int:
        return len(self.store)

    # ---- snapshots and comparison --------------------------------------------------------------

    def snapshot(self) -> bytes:
        """Everything, canonically: equal states give equal bytes."""
        return b"".join(self.snapshot_later())

    def snapshot_later(self) -> Iterator[bytes]:
        """Freeze the current state cheaply, now; the returned iterator encodes it a part at a
        time (`SNAPSHOT_PART_ROWS` keys or versions), as its caller asks for the next.

        The store's `Image` is read while applying goes on and copies none of the keys' values or
        versions (kv/mvcc.py); the rest is small and copied. A node encodes it on its event loop
        between its other work (snapshots.py): a million keys take seconds to pack, and a thread
        would not take that off the loop, since packing holds the interpreter's lock and the loop
        would wait out the thread's switch interval (5 ms) at every turn. The parts joined are the
        bytes one packb of the whole list gives. The runs of sorted keys are each made in a part of
        its own, empty: the node puts them out of the young collections' sight then (node/heap.py,
        snapshots.py). A part of keys the image does not hold (deleted before it was taken) is
        empty too: its collection finds little, and the part still bounds the turn.
        """
        image = self.store.frozen()
        dedup, members = list(self._dedup.items()), sorted(self.members.items())
        removed, leases, auth = sorted(self.removed_members), self.leases.rows(), self.auth.rows()
        applied_index, revision = self.applied_index, self.revision

        def parts() -> Iterator[bytes]:
            try:
                packer = msgpack.Packer(unicode_errors=ESCAPES)
                keys = yield from _sorted_between_parts(image.arrived_keys())
                yield (packer.pack_array_header(11) + packer.pack(_SNAPSHOT_FORMAT) + packer.pack(applied_index)
                       + packer.pack(revision) + packer.pack_array_header(image.count))
                keys_packed = 0
                while chunk := list(islice(keys, SNAPSHOT_PART_ROWS)):
                    held = [(k, row) for k in chunk if (row := image.row(k)) is not None]
                    yield b"".join(packer.pack([k, *row]) for k, row in held)
                    keys_packed += len(held)
                assert keys_packed == image.count, (keys_packed, image.count)
                history = yield from _sorted_between_parts(image.arrived_past_keys())
                yield (packer.pack([[rid, *first] for rid, first in dedup])
                       + packer.pack([list(m) for m in members]) + packer.pack(removed)
                       + packer.pack_array_header(image.past_count))
                # A version is a (revision, row or None) tuple, and msgpack packs a tuple as the
                # array it would pack for the same list: no list need be built per version.
                part: list[bytes] = []
                rows = histories_packed = 0
                for k in history:
                    if (versions := image.versions(k)) is not None:
                        part.append(packer.pack((k, versions)))
                        rows += len(versions)
                        histories_packed += 1
                        if rows >= SNAPSHOT_PART_ROWS:
                            yield b"".join(part)
                            part, rows = [], 0
                assert histories_packed == image.past_count, (histories_packed, image.past_count)
                yield b"".join(part) + packer.pack(image.compacted) + packer.pack(leases) + packer.pack(auth)
            finally:
                image.close()  # or every change goes on saving rows in it

        return parts()

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's; raises ValueError if data is not one."""
        try:
            fmt, applied_index, revision, items, dedup, *rest = unpackb(data)
            if fmt not in _SNAPSHOT_FIELDS or len(rest) != _SNAPSHOT_FIELDS[fmt] - 5:
                raise ValueError(f"unknown snapshot format {fmt!r} with {5 + len(rest)} fields")
            member_rows, removed, past_rows, compacted, lease_rows, auth_rows = (
                rest + [[], [], [], 0, [], None][len(rest):])
            members = {member_id: details for member_id, details in member_rows}
            if not all(type(m) is str and type(d) is bytes for m, d in members.items()):
                raise ValueError("malformed member table")
            if not all(type(m) is str for m in removed):
                raise ValueError("malformed removed-member list")
            # Rows from before leases lack the lease: it is 0.
            current = {row[0]: checked_row(row[1:] if len(row) == 6 else [*row[1:], 0]) for row in items}
            past = {key: [(rev, None if fields is None else checked_row(fields)) for rev, fields in versions]
                    for key, versions in past_rows}
            if fmt == 1:  # written before fingerprints: any reuse of these ids counts as a retry
                table = OrderedDict((rid, FirstUse(b"", "", None, 0, result)) for rid, result in dedup)
            else:
                table = OrderedDict((row[0] if type(row[0]) is str else tuple(row[0]), FirstUse._make(row[1:]))
                                    for row in dedup)
            if not all((type(r) is str or (len(r) == 2 and all(type(part) is str for part in r)))
                       and type(f.result) is bytes and type(f.fingerprint) is bytes for r, f in table.items()):
                raise ValueError("malformed dedup table")
            leases = LeaseTable.from_rows(lease_rows)
            auth = AuthState() if auth_rows is None else AuthState.from_rows(auth_rows)
        except Exception as exc:
            raise ValueError(f"not a KV snapshot: {exc}") from exc
        self.applied_index, self.revision = applied_index, revision
        listener = self.store.listener
        self.store, self.leases, self.auth = MVCCStore.restored(current, past, compacted), leases, auth
        self.store.listener = listener
        self._dedup, self.members, self.removed_members = table, members, set(removed)
        self._dedup_bytes = sum(first.cost_bytes(rid) for rid, first in table.items())
        self._evict_dedup()

    def digest(self) -> str:
        """A stable hash of the whole state (sha256 of the snapshot), for comparing replicas."""
        return hashlib.sha256(self.snapshot()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KVStateMachine):
            return NotImplemented
        return self.snapshot() == other.snapshot()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (f"KVStateMachine(keys={len(self.store)}, revision={self.revision}, "
                f"applied_index={self.applied_index}, dedup={len(self._dedup)})")
