"""The key-value state machine and its commands, tested through the same path a replica uses:
commands are encoded to bytes and applied at increasing log indexes.

The seed's two motivating examples are here as transactions: a bank transfer guarded by
mod_revision compares, and stock that is never oversold, guarded by value compares.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftkv.core import ConfChange, ConfChangeKind
from raftkv.kv import (
    INVALID,
    NOT_FOUND,
    PRECONDITION_FAILED,
    REQUEST_KEY_REUSED,
    UNSET,
    AsUser,
    Command,
    Compare,
    CompareOp,
    Delete,
    FoundStore,
    InvalidCommand,
    KeyValue,
    KVStateMachine,
    PublishMember,
    Put,
    Target,
    Txn,
    TxnDelete,
    TxnGet,
    TxnPut,
    TxnRange,
    decode,
    delete_from_json,
    encode,
    json_equal,
    put_from_json,
    txn_from_json,
)


class Replica:
    """A state machine fed like a node feeds it: encoded commands at consecutive indexes."""

    def __init__(self, sm: KVStateMachine | None = None) -> None:
        self.sm = sm if sm is not None else KVStateMachine()  # an empty machine is falsy

    def __call__(self, cmd: Any) -> dict[str, Any]:
        return self.sm.apply(self.sm.applied_index + 1, encode(cmd))


@pytest.fixture
def kv() -> Replica:
    return Replica()


def cmp(key: str, target: str, op: str, value: Any) -> Compare:
    return Compare(key, Target(target), CompareOp(op), value)


# ---- put, get, delete, revisions ---------------------------------------------------------------


def test_put_then_get(kv: Replica) -> None:
    assert kv.sm.get("a") is None
    r = kv(Put("a", {"x": [1, 2]}))
    assert r == {"ok": True, "op": "put", "key": "a", "value": {"x": [1, 2]}, "revision": 1, "prev": None}
    assert kv.sm.get("a") == KeyValue({"x": [1, 2]}, 1, 1, 1)
    assert len(kv.sm) == 1 and kv.sm.applied_index == 1


def test_create_revision_stays_while_mod_revision_and_version_move(kv: Replica) -> None:
    kv(Put("a", 1))
    kv(Put("b", 1))
    r = kv(Put("a", 2))
    assert r["revision"] == 3 and r["prev"]["value"] == 1 and r["prev"]["mod_revision"] == 1
    assert kv.sm.get("a") == KeyValue(2, create_revision=1, mod_revision=3, version=2)
    assert kv.sm.get("b") == KeyValue(1, 2, 2, 1)


def test_delete_and_recreate_starts_a_new_life(kv: Replica) -> None:
    kv(Put("a", 1))
    kv(Put("a", 2))
    r = kv(Delete("a"))
    assert r["ok"] and r["revision"] == 3 and r["prev"]["value"] == 2
    assert kv.sm.get("a") is None and len(kv.sm) == 0
    kv(Put("a", 3))
    assert kv.sm.get("a") == KeyValue(3, 4, 4, 1)


def test_delete_of_absent_key_is_not_found_and_takes_no_revision(kv: Replica) -> None:
    kv(Put("a", 1))
    r = kv(Delete("zzz"))
    assert r == {"ok": False, "error": NOT_FOUND, "op": "delete", "key": "zzz", "revision": 1}
    assert kv.sm.revision == 1


def test_a_put_nobody_waits_for_changes_the_state_as_an_answered_one_and_returns_none() -> None:
    commands = [Put("a", 1), Put("a", 2), Put("b", "x", prev_exist=False), Put("a", 3, prev_value=99),
                Delete("b"), Txn((), (TxnPut("c", 1),), ()), Put("a", 4, request_id="r")]
    answered, unanswered = KVStateMachine(), KVStateMachine()
    results = []
    for index, cmd in enumerate(commands, 1):
        answered.apply(index, encode(cmd))
        results.append(unanswered.apply(index, encode(cmd), answer=False))
    assert unanswered == answered and unanswered.digest() == answered.digest()
    # Only a successful put skips its result; a refusal, the other commands and a request the
    # id table keeps (so that a retry gets it) build theirs.
    assert results[:3] == [None, None, None] and results[3]["error"] == PRECONDITION_FAILED
    assert results[4]["op"] == "delete" and results[5]["op"] == "txn"
    assert results[6]["op"] == "put" and Replica(unanswered)(Put("a", 4, request_id="r"))["replayed"]


# ---- compare-and-set ---------------------------------------------------------------------------


def assert_cas_failed(kv: Replica, r: dict[str, Any], current: Any) -> None:
    assert r["ok"] is False and r["error"] == PRECONDITION_FAILED and r["reason"]
    assert r["revision"] == kv.sm.revision
    assert (r["current"] and r["current"]["value"]) == current


@pytest.mark.parametrize(
    ("stored", "prev_value", "ok"),
    [(1, 1, True), (1, 2, False), (None, None, True), (0, None, False), (1, True, False),
     (1, 1.0, True), ({"a": [1]}, {"a": [1]}, True), ({"a": [1]}, {"a": [True]}, False)],
)
def test_cas_by_prev_value(kv: Replica, stored: Any, prev_value: Any, ok: bool) -> None:
    kv(Put("k", stored))
    r = kv(Put("k", "new", prev_value=prev_value))
    if ok:
        assert r["ok"] and kv.sm.get("k").value == "new"
    else:
        assert_cas_failed(kv, r, stored)
        assert kv.sm.get("k") == KeyValue(stored, 1, 1, 1) and kv.sm.revision == 1


def test_prev_value_null_is_not_prev_value_absent(kv: Replica) -> None:
    assert kv(Put("k", 1, prev_value=None))["error"] == PRECONDITION_FAILED  # absent is not null
    assert kv(Put("k", 1))["ok"]  # UNSET: unconditional
    assert Put("k", 1).prev_value is UNSET


def test_cas_by_prev_revision(kv: Replica) -> None:
    kv(Put("k", "a"))
    kv(Put("k", "b"))
    assert_cas_failed(kv, kv(Put("k", "c", prev_revision=1)), "b")
    assert kv(Put("k", "c", prev_revision=2))["revision"] == 3
    assert kv(Put("new", 1, prev_revision=0))["ok"]  # absent keys have mod_revision 0
    assert_cas_failed(kv, kv(Put("new", 2, prev_revision=0)), 1)


def test_prev_exist_false_is_create_only(kv: Replica) -> None:
    assert kv(Put("lock", "me", prev_exist=False))["ok"]
    r = kv(Put("lock", "you", prev_exist=False))
    assert_cas_failed(kv, r, "me")
    assert kv.sm.get("lock").value == "me" and kv.sm.revision == 1


def test_prev_exist_true_is_update_only(kv: Replica) -> None:
    r = kv(Put("k", 1, prev_exist=True))
    assert r["error"] == PRECONDITION_FAILED and r["current"] is None and len(kv.sm) == 0
    kv(Put("k", 1))
    assert kv(Put("k", 2, prev_exist=True))["ok"]


def test_delete_guarded_by_prev_revision(kv: Replica) -> None:
    kv(Put("k", 1))
    kv(Put("k", 2))
    assert_cas_failed(kv, kv(Delete("k", prev_revision=1)), 2)
    assert kv(Delete("k", prev_revision=2))["ok"] and kv.sm.get("k") is None


def test_failing_cas_changes_nothing_but_the_applied_index(kv: Replica) -> None:
    kv(Put("k", 1))
    before = KVStateMachine()
    before.restore(kv.sm.snapshot())
    kv(Put("k", 2, prev_value=99))
    kv(Delete("k", prev_revision=99))
    kv(Delete("absent"))
    before.apply_noop(kv.sm.applied_index)
    assert before == kv.sm


# ---- transactions ------------------------------------------------------------------------------


def test_txn_success_branch_is_one_revision(kv: Replica) -> None:
    kv(Put("x", 1))
    r = kv(Txn((cmp("x", "value", "==", 1),), (TxnPut("a", 1), TxnPut("b", 2), TxnGet("a")), (TxnGet("x"),)))
    assert r["ok"] and r["succeeded"] and r["revision"] == 2
    assert [resp["op"] for resp in r["responses"]] == ["put", "put", "get"]
    assert r["responses"][2]["kv"] == {"key": "a", "value": 1, "create_revision": 2, "mod_revision": 2,
                                       "version": 1}  # reads see earlier writes of the same txn
    assert kv.sm.get("a").mod_revision == kv.sm.get("b").mod_revision == 2


def test_txn_failure_branch(kv: Replica) -> None:
    kv(Put("x", 1))
    r = kv(Txn((cmp("x", "value", "==", 2),), (TxnPut("a", 1),), (TxnGet("x"), TxnDelete("x"))))
    assert r["succeeded"] is False and r["revision"] == 2
    assert r["responses"][0]["kv"]["value"] == 1
    assert r["responses"][1] == {"op": "delete", "key": "x", "deleted": True,
                                 "prev": {"key": "x", "value": 1, "create_revision": 1, "mod_revision": 1,
                                          "version": 1}}
    assert kv.sm.get("a") is None and kv.sm.get("x") is None


def test_txn_is_all_or_nothing(kv: Replica) -> None:
    kv(Put("guard", "open"))
    ops = tuple(TxnPut(f"k{i}", i) for i in range(10))
    r = kv(Txn((cmp("guard", "value", "==", "open"), cmp("guard", "version", ">", 1)), ops, ()))
    assert r["succeeded"] is False and r["responses"] == [] and len(kv.sm) == 1 and kv.sm.revision == 1
    r = kv(Txn((cmp("guard", "value", "==", "open"), cmp("guard", "version", "==", 1)), ops, ()))
    assert r["succeeded"] and len(kv.sm) == 11 and kv.sm.revision == 2


def test_read_only_txn_and_no_op_deletes_take_no_revision(kv: Replica) -> None:
    kv(Put("p/a", 1))
    r = kv(Txn((), (TxnGet("p/a"), TxnRange("p/", 10), TxnDelete("absent")), ()))
    assert r["succeeded"] and r["revision"] == 1 and kv.sm.revision == 1
    assert r["responses"][1] == {"op": "range", "prefix": "p/", "more": False,
                                 "items": [{"key": "p/a", "value": 1, "create_revision": 1,
                                            "mod_revision": 1, "version": 1}]}
    assert r["responses"][2] == {"op": "delete", "key": "absent", "deleted": False, "prev": None}


@pytest.mark.parametrize(
    ("compare", "holds"),
    [
        (cmp("absent", "value", "==", None), False),  # no value to compare, as in etcd
        (cmp("absent", "value", "!=", 1), False),
        (cmp("absent", "version", "==", 0), True),
        (cmp("absent", "create_revision", "==", 0), True),
        (cmp("absent", "exists", "==", False), True),
        (cmp("k", "exists", "!=", False), True),
        (cmp("k", "value", ">", 4), True),
        (cmp("k", "value", "<", 5.5), True),
        (cmp("k", "value", "==", True), False),
        (cmp("s", "value", ">", "abc"), True),
        (cmp("k", "mod_revision", "==", 1), True),
        (cmp("k", "mod_revision", "<", 1), False),
    ],
)
def test_compare_semantics(kv: Replica, compare: Compare, holds: bool) -> None:
    kv(Put("k", 5))
    kv(Put("s", "abd"))
    assert kv(Txn((compare,), (), ()))["succeeded"] is holds


def test_ordering_a_number_against_a_string_is_invalid_and_changes_nothing(kv: Replica) -> None:
    kv(Put("k", 5))
    kv(Put("l", [1]))
    for compare in (cmp("k", "value", ">", "4"), cmp("l", "value", "<", 2)):
        result = kv(Txn((compare,), (TxnPut("x", 1),), (TxnPut("y", 1),)))
        assert result["ok"] is False and result["error"] == INVALID and "cannot compare" in result["message"]
    assert kv.sm.revision == 2 and kv.sm.get("x") is None and kv.sm.get("y") is None
    assert kv(Txn((cmp("k", "value", "==", "5"),), (), ()))["succeeded"] is False  # equality is just false


def test_a_txn_logged_before_typed_compares_replays_as_it_applied(kv: Replica) -> None:
    """An entry written by an older version (wire tag 3) took the failure branch on a number
    against a string; replaying it now must do the same, or replicas would diverge."""
    kv(Put("k", 5))
    old = Txn((cmp("k", "value", ">", "4"),), (TxnPut("x", 1),), (TxnPut("y", 1),), typed_compares=False)
    assert msgpack.unpackb(encode(old))[0] == 3 and decode(encode(old)) == old
    assert kv(old)["succeeded"] is False and kv.sm.get("y").value == 1


def transfer(kv: Replica, src: str, dst: str, amount: int, seen: dict[str, KeyValue]) -> dict[str, Any]:
    """Move money based on balances read earlier; commit only if neither account moved since."""
    return kv(Txn(
        (cmp(src, "mod_revision", "==", seen[src].mod_revision),
         cmp(dst, "mod_revision", "==", seen[dst].mod_revision)),
        (TxnPut(src, seen[src].value - amount), TxnPut(dst, seen[dst].value + amount)),
        (TxnGet(src), TxnGet(dst)),
    ))


def test_bank_transfer_and_a_concurrent_one_that_loses(kv: Replica) -> None:
    kv(Put("cuenta_A", 1000))
    kv(Put("cuenta_B", 500))
    # Two clients read the same balances, then both try to move money out of A.
    seen = {k: kv.sm.get(k) for k in ("cuenta_A", "cuenta_B")}
    first = transfer(kv, "cuenta_A", "cuenta_B", 300, seen)
    second = transfer(kv, "cuenta_A", "cuenta_B", 900, seen)
    assert first["succeeded"] and not second["succeeded"]
    # The loser learns the fresh balances from its failure branch and retries against them.
    fresh = {r["key"]: KeyValue(r["kv"]["value"], 0, r["kv"]["mod_revision"], 0) for r in second["responses"]}
    assert fresh["cuenta_A"].value == 700
    assert transfer(kv, "cuenta_A", "cuenta_B", 600, fresh)["succeeded"]
    assert kv.sm.get("cuenta_A").value == 100 and kv.sm.get("cuenta_B").value == 1400  # no money made or lost


def test_stock_is_never_oversold() -> None:
    kv = Replica()
    kv(Put("producto_456_stock", 10))
    sold, buyers = 0, [3, 4, 2, 5, 1, 3]
    # Every buyer reads the same stock, then all submit at once; the log orders them. Losers re-read
    # and retry until they buy or the stock cannot cover them (then the guard itself refuses).
    pending = list(buyers)
    while pending:
        seen = kv.sm.get("producto_456_stock").value
        still = []
        for qty in pending:
            r = kv(Txn((cmp("producto_456_stock", "value", "==", seen),
                        cmp("producto_456_stock", "value", ">", qty - 1)),
                       (TxnPut("producto_456_stock", seen - qty),), ()))
            if r["succeeded"]:
                sold += qty
            elif seen >= qty:
                still.append(qty)
        pending = still
    stock = kv.sm.get("producto_456_stock").value
    assert stock >= 0 and sold + stock == 10
    assert not kv(Txn((cmp("producto_456_stock", "value", ">", stock),),
                      (TxnPut("producto_456_stock", -1),), ()))["succeeded"]


# ---- exactly-once ------------------------------------------------------------------------------


def test_retried_request_returns_the_first_result_and_changes_nothing(kv: Replica) -> None:
    first = kv(Put("k", 1, request_id="req-1"))
    again = kv(Put("k", 1, request_id="req-1"))
    assert again == {**first, "replayed": True} and kv.sm.revision == 1 and kv.sm.get("k").value == 1
    failed = kv(Put("k", 3, prev_value=42, request_id="req-2"))
    kv(Put("k", 42))
    assert kv(Put("k", 3, prev_value=42, request_id="req-2")) == {**failed, "replayed": True}  # it was "failed"
    t1 = kv(Txn((), (TxnPut("n", 1),), (), request_id="req-3"))
    assert kv(Txn((), (TxnPut("n", 1),), (), request_id="req-3")) == {**t1, "replayed": True}
    assert kv.sm.revision == 3


def test_a_retry_is_recognised_whatever_the_key_order_of_its_json_objects(kv: Replica) -> None:
    kv(Put("k", {"a": 1, "b": [2, {"c": 3, "d": 4}]}, request_id="r"))
    assert kv(Put("k", {"b": [2, {"d": 4, "c": 3}], "a": 1}, request_id="r"))["replayed"]
    assert kv(Put("k", {"a": 1.0, "b": [2, {"c": 3, "d": 4}]}, request_id="r"))["mismatch"] == "body"


@pytest.mark.parametrize(("reuse", "mismatch"), [
    (Put("b", 1, request_id="k1"), "key"),
    (Put("a", 2, request_id="k1"), "body"),
    (Put("a", 1, prev_value=None, request_id="k1"), "body"),
    (Delete("a", request_id="k1"), "operation"),
    (Txn((), (TxnPut("a", 1),), (), request_id="k1"), "operation"),
])
def test_a_request_key_reused_for_another_request_is_refused_and_changes_nothing(
        kv: Replica, reuse: Command, mismatch: str) -> None:
    first = kv(Put("a", 1, request_id="k1"))
    remembered = kv.sm.dedup_stats()
    result = kv(reuse)
    assert result["ok"] is False and result["error"] == REQUEST_KEY_REUSED
    assert result["mismatch"] == mismatch and result["first_use"] == {"op": "put", "key": "a"}
    assert result["first_index"] == 1 and result["request_id"] == "k1"
    assert kv.sm.dedup_stats() == remembered
    assert kv.sm.revision == 1 and kv.sm.get("b") is None and kv.sm.get("a").value == 1
    assert kv(Put("a", 1, request_id="k1")) == {**first, "replayed": True}  # the true retry still works


def test_dedup_eviction_is_oldest_first_and_identical_on_replicas() -> None:
    a, b = Replica(KVStateMachine(max_dedup_entries=3)), Replica(KVStateMachine(max_dedup_entries=3))
    for replica in (a, b):
        for i in range(4):
            replica(Put(f"k{i}", i, request_id=f"r{i}"))
        replica(Put("k3", 3, request_id="r3"))  # remembered: no effect
        replica(Put("k0", "again", request_id="r0"))  # r0 was evicted: applied as new
    assert a.sm.get("k3").value == 3 and a.sm.get("k0").value == "again"
    assert a.sm.digest() == b.sm.digest()
    restored = KVStateMachine(max_dedup_entries=3)
    restored.restore(a.sm.snapshot())
    assert Replica(restored)(Put("k1", "x", request_id="r1"))["revision"] == 6  # r1 is now evicted


def test_dedup_table_is_bounded_in_bytes() -> None:
    kv = Replica(KVStateMachine(max_dedup_bytes=10_000))
    for i in range(5):
        kv(Put(f"k{i}", "v" * 3000, request_id=f"r{i}"))  # each answer holds a 3,000-byte value
    stats = kv.sm.dedup_stats()
    assert stats["requestKeys"] == 3 and stats["bytes"] <= 10_000 and stats["oldestIndex"] == 3
    assert kv(Put("k0", "v" * 3000, request_id="r0")).get("replayed") is None  # forgotten: a new write
    restored = KVStateMachine(max_dedup_bytes=10_000)
    restored.restore(kv.sm.snapshot())
    assert restored.dedup_stats() == kv.sm.dedup_stats()


def test_a_format_1_snapshot_restores_and_treats_any_reuse_of_its_ids_as_a_retry() -> None:
    old_result = msgpack.packb({"ok": True, "op": "put", "key": "a", "value": 1, "revision": 1, "prev": None})
    old = msgpack.packb([1, 1, 1, [["a", 1, 1, 1, 1]], [["k1", old_result]]])
    sm = KVStateMachine()
    sm.restore(old)
    assert sm.get("a").value == 1 and sm.dedup_stats()["requestKeys"] == 1
    assert Replica(sm)(Put("a", 2, request_id="k1"))["replayed"] and sm.get("a").value == 1


# ---- ranges ------------------------------------------------------------------------------------


def test_prefix_range_with_limit_and_more(kv: Replica) -> None:
    for key in ["user/3", "user/1", "users", "user/2", "admin", "user/10"]:
        kv(Put(key, key))
    items, more = kv.sm.range("user/", 2)
    assert [k for k, _ in items] == ["user/1", "user/10"] and more
    items, more = kv.sm.range("user/", 4)
    assert [k for k, _ in items] == ["user/1", "user/10", "user/2", "user/3"] and not more
    kv(Delete("user/10"))
    kv(Put("user/0", 0))
    kv(Delete("user/0"))
    kv(Put("user/0", 1))
    assert [k for k, _ in kv.sm.range("user/")[0]] == ["user/0", "user/1", "user/2", "user/3"]
    assert len(kv.sm.range("", 100)[0]) == 6 and kv.sm.range("zz") == ([], False)


# ---- snapshots ---------------------------------------------------------------------------------


def test_snapshot_restore_round_trip(kv: Replica) -> None:
    kv(Put("b", [1, {"x": None}], request_id="r1"))
    kv(Put("a", 2.5))
    kv(Delete("b"))
    kv(Txn((), (TxnPut("c", True), TxnPut("d", "é")), ()))
    other = KVStateMachine()
    other.restore(kv.sm.snapshot())
    assert other == kv.sm and other.digest() == kv.sm.digest() and other.snapshot() == kv.sm.snapshot()
    assert (other.revision, other.applied_index, len(other)) == (4, 4, 3)
    assert Replica(other)(Put("b", 0, request_id="r1")) == {**kv(Put("b", 0, request_id="r1"))}
    for cmd in (Put("e", 1), Delete("a"), Put("c", 1, prev_value=True)):
        assert Replica(other)(cmd) == kv(cmd)
    assert other.digest() == kv.sm.digest()


def test_restore_rejects_garbage() -> None:
    for data in (b"", b"\x01", msgpack.packb([99, 0, 0, [], []]), msgpack.packb([1, 0, 0, [], [["r", 5]]])):
        with pytest.raises(ValueError):
            KVStateMachine().restore(data)


# ---- the log entry codec and strict apply ------------------------------------------------------

ALL_COMMANDS = [
    Put("k", "v"),
    Put("k", None, prev_value=None, prev_revision=3, prev_exist=True, request_id="r"),
    Put("k", {"nested": [1, 2.5, "s", None, True, {"x": []}]}, prev_value=[1]),
    Put("k", 1, prev_exist=False),
    Delete("k"),
    Delete("k", prev_revision=7, request_id="r2"),
    Txn(),
    Txn((cmp("a", "value", "==", {"x": 1}), cmp("a", "version", ">", 0), cmp("b", "exists", "!=", True),
         cmp("c", "create_revision", "<", 9), cmp("d", "mod_revision", "!=", 0)),
        (TxnPut("a", [1]), TxnDelete("b"), TxnGet("c"), TxnRange("p/", 5)),
        (TxnRange("", 1), TxnRange("", None, "a", "b")), request_id="t"),  # None: no limit (etcd's txn)
]


@pytest.mark.parametrize("cmd", ALL_COMMANDS, ids=repr)
def test_decode_encode_round_trip(cmd: Any) -> None:
    assert decode(encode(cmd)) == cmd


@pytest.mark.parametrize(
    "data",
    [b"", b"\xc1", b"not msgpack", msgpack.packb(None), msgpack.packb([9, "k"]),
     msgpack.packb([1, "", 1, None, None, None, None]),  # empty key
     msgpack.packb([1, "k", float("nan"), None, None, None, None]),
     msgpack.packb([1, "k", b"bytes", None, None, None, None]),
     msgpack.packb([3, [["k", "size", "==", 1]], [], [], None]),
     msgpack.packb([3, [], [[7, "k"]], [], None]),
     msgpack.packb([2, "k", "7", None]),
     msgpack.packb([True, "k", 1, None, None, None, None]),  # True == 1, but is no tag
     msgpack.packb([1, "k", 1, "not a box", None, None, None]),
     msgpack.packb([3, [["k", ["value"], "==", 1]], [], [], None]),  # unhashable enum value
     msgpack.packb([3, [], [[[1], "k"]], [], None]),  # unhashable op tag
     msgpack.packb([3, [], [[4, "", 0]], [], None])],  # range limit 0
)
def test_apply_answers_malformed_entries_with_an_error_result(kv: Replica, data: bytes) -> None:
    kv(Put("k", 1))
    r = kv.sm.apply(2, data)
    assert r["ok"] is False and r["error"] == INVALID and r["message"]
    assert kv.sm.revision == 1 and kv.sm.applied_index == 2 and kv.sm.get("k").value == 1


def test_apply_index_must_move_forward_and_noops_count(kv: Replica) -> None:
    kv.sm.apply_noop(1)
    kv.sm.apply(3, encode(Put("k", 1)))  # gaps are fine (e.g. membership entries)
    assert kv.sm.applied_index == 3 and kv.sm.revision == 1
    with pytest.raises(ValueError):
        kv.sm.apply(3, encode(Put("k", 2)))
    with pytest.raises(ValueError):
        kv.sm.apply_noop(2)


def test_json_equal_is_json_not_python() -> None:
    assert json_equal(1, 1.0) and json_equal({"a": [1, None]}, {"a": [1, None]})
    assert not json_equal(True, 1) and not json_equal([0], [False]) and not json_equal({"a": 1}, {"b": 1})
    assert not json_equal(None, 0) and not json_equal("1", 1) and not json_equal([1], {"0": 1})


# ---- parsing the HTTP API's JSON ---------------------------------------------------------------


def test_txn_from_json_accepts_both_op_spellings() -> None:
    obj = {"compare": [{"key": "a", "target": "mod_revision", "op": "==", "value": 3}],
           "success": [{"op": "put", "key": "a", "value": {"n": 1}}, {"delete": {"key": "b"}}],
           "failure": [{"get": {"key": "a"}}, {"op": "range", "prefix": "p/"}, {"range": {}}],
           "request_id": "abc"}
    assert txn_from_json(obj) == Txn(
        (cmp("a", "mod_revision", "==", 3),), (TxnPut("a", {"n": 1}), TxnDelete("b")),
        (TxnGet("a"), TxnRange("p/", 1000), TxnRange("", 1000)), request_id="abc")
    assert txn_from_json({}) == Txn()


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "txn: must be a JSON object, not an array"),
        ({"compares": []}, "unknown field 'compares'"),
        ({"success": {}}, "success: must be an array of at most 128 items, not an object"),
        ({"success": [{"op": "put", "key": "a"}]}, "success[0]: missing field 'value'"),
        ({"success": [{"op": "put", "value": 1}]}, "success[0]: missing field 'key'"),
        ({"success": [{"op": "put", "key": "", "value": 1}]}, "success[0].key: must not be empty"),
        ({"success": [{"op": "put", "key": 5, "value": 1}]}, "success[0].key: must be a string, not a number"),
        ({"success": [{"op": "upsert", "key": "a"}]}, "success[0].op: must be one of"),
        ({"success": [{"key": "a"}]}, "success[0].op: must be one of 'put', 'delete', 'get', 'range' (missing)"),
        ({"success": ["put a 1"]}, "success[0]: must be a JSON object, not a string"),
        ({"failure": [{"op": "get", "key": "a", "value": 1}]}, "failure[0]: unknown field 'value'"),
        ({"failure": [{"op": "range", "limit": 0}]}, "failure[0].limit: must be an integer from 1"),
        ({"failure": [{"op": "range", "limit": "10"}]}, "failure[0].limit: must be an integer"),
        ({"failure": [{"op": "range", "limit": None}]}, "failure[0].limit: must be an integer from 1"),
        ({"failure": [{"op": "range", "prefix": None}]}, "failure[0].prefix: must be a string, not null"),
        ({"success": [{"op": "put", "key": "a", "value": float("nan")}]}, "must be finite"),
        ({"success": [{"op": "put", "key": "a", "value": 2**64}]}, "out of the 64-bit range"),
        ({"success": [{"op": "put", "key": "a", "value": "\ud800"}]}, "lone surrogate"),
        ({"success": [{"op": "put", "key": "a", "value": [[[[]]]] * 1}] * 129}, "at most 128 items, not 129"),
        ({"compare": [{"key": "a", "target": "size", "op": "==", "value": 1}]},
         "compare[0].target: 'size' is not one of 'value', 'version'"),
        ({"compare": [{"key": "a", "target": "value", "op": ">=", "value": 1}]},
         "compare[0].op: '>=' is not one of '==', '!=', '>', '<'"),
        ({"compare": [{"key": "a", "target": ["value"], "op": "==", "value": 1}]}, "compare[0].target:"),
        ({"compare": [{"key": "a", "target": "value", "op": "=="}]}, "compare[0]: missing field 'value'"),
        ({"compare": [{"target": "value", "op": "==", "value": 1}]}, "compare[0]: missing field 'key'"),
        ({"compare": [{"key": "a", "target": "version", "op": "==", "value": -1}]},
         "compare[0].value: must be an integer >= 0"),
        ({"compare": [{"key": "a", "target": "mod_revision", "op": "==", "value": True}]},
         "compare[0].value: must be an integer >= 0"),
        ({"compare": [{"key": "a", "target": "exists", "op": ">", "value": True}]}, "'exists' takes op"),
        ({"compare": [{"key": "a", "target": "exists", "op": "==", "value": 1}]}, "'exists' takes op"),
        ({"compare": [{"key": "a", "target": "value", "op": ">", "value": [1]}]},
         "'>' compares numbers or strings, not an array"),
        ({"compare": "a==1"}, "compare: must be an array of at most 128 items, not a string"),
        ({"request_id": ""}, "request_id: must not be empty"),
        ({"request_id": 7}, "request_id: must be a string"),
        ({"success": [{"op": "put", "key": "a", "value": 1}, {"op": "get", "key": "a"},
                      {"op": "delete", "key": "a"}]}, "success[2]: key 'a' is already written by success[0]"),
        ({"failure": [{"put": {"key": "b", "value": 1}}, {"put": {"key": "b", "value": 2}}]},
         "failure[1]: key 'b' is already written by failure[0]"),
    ],
)
def test_txn_from_json_rejects_malformed_input(obj: Any, message: str) -> None:
    with pytest.raises(InvalidCommand) as exc:
        txn_from_json(obj)
    assert message in str(exc.value)


def test_put_and_delete_from_json() -> None:
    assert put_from_json("k", {"value": None}) == Put("k", None)
    assert put_from_json("k", {"value": 1, "prev_value": None}, request_id="r") == Put("k", 1, None, request_id="r")
    assert put_from_json("k", {"value": 1, "prev_exist": False}).prev_exist is False
    assert delete_from_json("k") == Delete("k")
    assert delete_from_json("k", {"prev_revision": 4}) == Delete("k", 4)
    for key, body, message in [
        ("k", {}, "missing field 'value'"),
        ("k", {"val": 1}, "unknown field 'val'"),
        ("", {"value": 1}, "key: must not be empty"),
        ("k", {"value": 1, "prev_revision": "3"}, "prev_revision: must be an integer"),
        ("k", {"value": 1, "prev_exist": "no"}, "prev_exist: must be true or false"),
        ("k", {"value": 1, "prev_exist": False, "prev_value": 1}, "contradicts"),
        ("k", "just a string", "body: must be a JSON object"),
    ]:
        with pytest.raises(InvalidCommand, match=message):
            put_from_json(key, body)
    with pytest.raises(InvalidCommand, match="prev_revision: must be an integer >= 1"):
        delete_from_json("k", {"prev_revision": 0})


# ---- replicas agree ----------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "p/x", "p/y"])
VALUES = st.one_of(st.integers(-3, 3), st.none(), st.booleans(), st.sampled_from(["s", "t"]),
                   st.lists(st.integers(0, 2), max_size=2))
RIDS = st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3", "r4", "r5"]))
TARGETS = st.sampled_from(["version", "create_revision", "mod_revision"])
COMPARES = st.one_of(
    st.builds(cmp, KEYS, st.just("value"), st.sampled_from(["==", "!="]), VALUES),
    st.builds(cmp, KEYS, st.just("value"), st.sampled_from([">", "<"]), st.integers(-3, 3)),
    st.builds(cmp, KEYS, TARGETS, st.sampled_from(["==", "!=", ">", "<"]), st.integers(0, 8)),
    st.builds(cmp, KEYS, st.just("exists"), st.sampled_from(["==", "!="]), st.booleans()),
)
OPS = st.one_of(st.builds(TxnPut, KEYS, VALUES), st.builds(TxnDelete, KEYS), st.builds(TxnGet, KEYS),
                st.builds(TxnRange, st.sampled_from(["", "p/"]), st.integers(1, 3)))
COMMANDS = st.one_of(
    st.builds(Put, KEYS, VALUES, st.one_of(st.just(UNSET), VALUES), st.one_of(st.none(), st.integers(0, 8)),
              st.sampled_from([None, True]), RIDS),
    st.builds(Put, KEYS, VALUES, prev_exist=st.just(False), request_id=RIDS),
    st.builds(Delete, KEYS, st.one_of(st.none(), st.integers(1, 8)), RIDS),
    st.builds(Txn, st.lists(COMPARES, max_size=3).map(tuple), st.lists(OPS, max_size=3).map(tuple),
              st.lists(OPS, max_size=3).map(tuple), RIDS),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(COMMANDS, max_size=40), st.integers(0, 40))
def test_replicas_agree_even_when_one_restarts_from_a_snapshot(cmds: list[Any], cut: int) -> None:
    entries = [encode(c) for c in cmds]
    a, b = KVStateMachine(max_dedup_entries=3), KVStateMachine(max_dedup_entries=3)
    results_a = [a.apply(i, e) for i, e in enumerate(entries, 1)]
    results_b = [b.apply(i, e) for i, e in enumerate(entries[:cut], 1)]
    b2 = KVStateMachine(max_dedup_entries=3)
    b2.restore(b.snapshot())
    results_b += [b2.apply(i, e) for i, e in enumerate(entries[cut:], len(results_b) + 1)]
    assert results_a == results_b
    assert a.digest() == b2.digest() and a == b2
    assert a.range("", 100) == b2.range("", 100)


def test_a_member_added_unstarted_is_filled_in_once_by_its_node() -> None:
    """A member added by its peer address alone (etcd's MemberAdd) is published by its node: the
    details replace the record only while the table holds the one expected, so a started member's
    record is never rewritten and a removed member stays out. No key changes, so no revision."""
    kv, unstarted, published = Replica(), b"peer only", b"name and addresses"
    kv.sm.apply_membership(1, ConfChange(ConfChangeKind.ADD_LEARNER, "m-1", unstarted))
    publish = PublishMember("m-1", unstarted, published)
    assert decode(encode(publish)) == publish
    assert kv(publish) == {"ok": True, "op": "publish_member", "id": "m-1", "revision": 0}
    assert kv.sm.members["m-1"] == published
    refused = kv(PublishMember("m-1", unstarted, b"someone else"))
    assert refused["error"] == PRECONDITION_FAILED and kv.sm.members["m-1"] == published
    kv.sm.apply_membership(kv.sm.applied_index + 1, ConfChange(ConfChangeKind.REMOVE, "m-1"))
    assert not kv(PublishMember("m-1", published, b"again"))["ok"] and "m-1" not in kv.sm.members
    with pytest.raises(InvalidCommand, match="details"):
        decode(encode(PublishMember("m-1", b"", "text, not bytes")))  # type: ignore[arg-type]


def test_a_founding_entry_starts_an_empty_store_at_etcds_first_revision() -> None:
    """etcd's store starts at revision 1, so no key is created at 1: its election recipe bounds
    the keys it waits for by its own create revision - 1, where 0 means no bound. A new cluster's
    log ends its founding with FoundStore; a store already past revision 0 is left as it is."""
    kv = Replica()
    assert decode(encode(FoundStore())) == FoundStore()
    assert kv(FoundStore()) == {"ok": True, "op": "found_store", "revision": 1}
    assert kv(Put("a", 1))["revision"] == 2 and kv.sm.get("a").create_revision == 2
    refused = kv(FoundStore())
    assert refused["error"] == PRECONDITION_FAILED and kv.sm.revision == 2
    with pytest.raises(InvalidCommand, match="request_id"):
        decode(msgpack.packb([11, "a request id"]))  # no client sends one
    with pytest.raises(InvalidCommand, match="FoundStore"):
        decode(encode(AsUser("alice", 0, FoundStore())))


# ---- keys and values that are bytes ------------------------------------------------------------


def test_bytes_that_are_not_utf8_are_kept_through_the_log_dedup_and_snapshots(kv: Replica) -> None:
    """etcd's clients write any bytes (etcdctl check perf: random binary keys); they live here as
    escaped bytes, and a valid UTF-8 command's bytes in the log are what they always were."""
    binary = "/check/\udc8a\udcff\x00"  # the bytes 8a ff 00 after the prefix
    assert msgpack.unpackb(encode(Put("a", "é")))[1:3] == ["a", "é"]  # plain msgpack, as before
    assert b"/check/\x8a\xff\x00" in encode(Put(binary, 1))
    first = kv(Put(binary, "\udcfe" * 3, request_id="r1"))
    assert first["ok"] and kv(Put(binary, "\udcfe" * 3, request_id="r1")) == {**first, "replayed": True}
    kv(Put("/check/é", 1))
    kv(Put("/checl", 1))
    assert [k for k, _ in kv.sm.range("/check/")[0]] == [binary, "/check/é"]  # by their bytes: 8a before c3 a9
    assert decode(encode(Put(binary, 1))) == Put(binary, 1)
    other = KVStateMachine()
    other.restore(kv.sm.snapshot())
    assert other == kv.sm and other.get(binary).value == "\udcfe" * 3
    assert kv(Txn((), (TxnDelete(binary),), ()))["ok"] and kv.sm.get(binary) is None


@pytest.mark.parametrize(("key", "why"), [("\udcc3\udca9", "spell valid UTF-8"), ("\ud800", "lone surrogate")])
def test_text_that_names_no_bytes_or_other_text_is_refused(kv: Replica, key: str, why: str) -> None:
    with pytest.raises(InvalidCommand, match=why):
        put_from_json(key, {"value": 1})
    with pytest.raises(InvalidCommand, match=why):
        put_from_json("k", {"value": {"nested": [key]}})
