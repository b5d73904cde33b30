"""The log view's one-line summary of each kind of entry (the dashboard's log shows them)."""

from __future__ import annotations

from raftkv.core.log import Entry
from raftkv.kv import Compact, FoundStore, LeaseGrant, LeaseRevoke, Put, Txn, TxnDeleteRange, encode
from raftkv.node.log_view import summarize


def test_every_command_has_a_summary() -> None:
    def summary(cmd: object) -> str:
        return summarize(Entry(1, 1, data=encode(cmd)))  # type: ignore[arg-type]

    assert summary(Put("a", "xyz")) == 'put "a" (5 B)'
    assert summary(Txn(success=(TxnDeleteRange("a", "b"),))) == "txn (0 compares, 1/0 ops)"
    assert summary(Compact(12)) == "compact to revision 12"
    assert summary(LeaseGrant(0x2A, 10)) == "grant lease 2a (TTL 10 s)"  # in hex, as etcdctl prints lease ids
    assert summary(LeaseRevoke(0x2A)) == "revoke lease 2a"
    assert summary(LeaseRevoke(0x2A, expired=True)) == "expire lease 2a"
    assert summary(FoundStore()) == "the empty store starts at revision 1 (etcd's first)"
