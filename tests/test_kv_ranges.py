"""The state machine's range operations and lease-aware txns (what etcd's KV API needs of it):
ranges and deletes over [start, end), txn puts with a lease, compares on a key's lease, and ops
logged in the older, shorter wire form still decoding as they were written."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from raftkv.kv import (
    NOT_FOUND,
    Compare,
    CompareOp,
    KVStateMachine,
    LeaseGrant,
    Put,
    Target,
    Txn,
    TxnDeleteRange,
    TxnPut,
    TxnRange,
    decode,
    encode,
)


class Replica:
    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.index = 0

    def __call__(self, cmd: Any) -> dict[str, Any]:
        self.index += 1
        return self.sm.apply(self.index, encode(cmd))


@pytest.fixture
def kv() -> Replica:
    replica = Replica()
    for key in ("a", "b", "b/1", "b/2", "c"):
        replica(Put(key, key.upper()))
    return replica


def test_delete_range_deletes_every_key_in_bounds_in_one_revision(kv: Replica) -> None:
    before = kv.sm.revision
    result = kv(Txn(success=(TxnDeleteRange("b", "c"),)))
    assert [p["key"] for p in result["responses"][0]["prevs"]] == ["b", "b/1", "b/2"]
    assert result["revision"] == before + 1
    assert sorted(kv.sm.store.current()) == ["a", "c"]
    assert all(kv.sm.store.get_at(k, before) is not None for k in ("b", "b/1", "b/2"))


def test_delete_range_with_no_end_reaches_the_last_key_and_an_empty_one_takes_no_revision(kv: Replica) -> None:
    kv(Txn(success=(TxnDeleteRange("b/2", None),)))
    assert sorted(kv.sm.store.current()) == ["a", "b", "b/1"]
    before = kv.sm.revision
    result = kv(Txn(success=(TxnDeleteRange("x", "y"),)))
    assert result["responses"][0]["prevs"] == [] and kv.sm.revision == before


def test_txn_range_reads_between_bounds(kv: Replica) -> None:
    result = kv(Txn(success=(TxnRange(start="b/", end="c"), TxnRange(start="b", end=None, limit=2))))
    first, second = result["responses"]
    assert [i["key"] for i in first["items"]] == ["b/1", "b/2"] and not first["more"]
    assert [i["key"] for i in second["items"]] == ["b", "b/1"] and second["more"]


def test_txn_put_attaches_a_lease_and_compares_on_it(kv: Replica) -> None:
    kv(LeaseGrant(7, 60))
    kv(Txn(success=(TxnPut("held", "x", lease=7),)))
    assert kv.sm.store.get("held").lease == 7 and "held" in kv.sm.leases.leases[7].keys
    holds = kv(Txn(compare=(Compare("held", Target.LEASE, CompareOp.EQ, 7),)))
    free = kv(Txn(compare=(Compare("a", Target.LEASE, CompareOp.EQ, 0),)))
    absent = kv(Txn(compare=(Compare("nope", Target.LEASE, CompareOp.EQ, 7),)))
    assert holds["succeeded"] and free["succeeded"] and not absent["succeeded"]


def test_a_txn_putting_with_an_absent_lease_does_nothing(kv: Replica) -> None:
    before = kv.sm.revision
    result = kv(Txn(success=(TxnPut("a", "changed"), TxnPut("z", "new", lease=99))))
    assert result["ok"] is False and result["error"] == NOT_FOUND and result["lease"] == 99
    assert kv.sm.store.get("a").value == "A" and kv.sm.store.get("z") is None and kv.sm.revision == before


def test_ops_at_their_defaults_keep_the_older_wire_form() -> None:
    old_put, old_range = [1, "k", "v"], [4, "p/", 10]  # how these ops were logged before lease and bounds
    txn = decode(msgpack.packb([4, [], [old_put, old_range], [], None]))
    assert txn.success == (TxnPut("k", "v"), TxnRange("p/", 10))
    assert encode(txn) == msgpack.packb([4, [], [old_put, old_range], [], None])
    leased = Txn(success=(TxnPut("k", "v", 5), TxnRange(start="a", end="b"), TxnDeleteRange("a")))
    assert decode(encode(leased)) == leased


def test_malformed_range_ops_are_refused_on_decode() -> None:
    for op in ([5], [5, "a", "b", "extra"], [4, "", 10, "a", "b", "extra"], [5, "a", ""]):
        assert KVStateMachine().apply(1, msgpack.packb([4, [], [op], [], None]))["error"] == "invalid"
