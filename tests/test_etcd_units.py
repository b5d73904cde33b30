"""The etcd layer's own rules, without a cluster: key ranges as etcd means them, which etcd error
(code and message, what clients match) each node-level failure becomes, and where a node serves
etcd's API and says it does."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

import raftkv.node_server as node_server
from raftkv.api.auth import Gate
from raftkv.byte_text import as_text
from raftkv.etcd.admission import Admission
from raftkv.etcd.convert import Bounds, key_text, kv_message, value_bytes
from raftkv.etcd.errors import EtcdError, translate
from raftkv.etcd.identity import number_of
from raftkv.etcd.kv import KVService
from raftkv.etcd.pb import kv_pb2, rpc_pb2
from raftkv.etcd.watch import MAX_FRAGMENT_BYTES, _fragments, _shared_prefix
from raftkv.kv import CompactedError, KeyValue, Put
from raftkv.node.config import ConfigError, Member, NodeConfig
from raftkv.node.errors import MembershipRefused, NoLeaderError, NotAppliedError, OutcomeUnknownError, RequestRefused
from raftkv.node.heap import HeapWatch
from raftkv.node.host import NodeHost
from raftkv.ports import Listener, node_listeners
from raftkv.supervisor import free_ports


def test_a_single_key_is_its_own_range() -> None:
    one = Bounds(b"a", b"")
    assert one.single and one.contains("a") and not one.contains("a/b") and one.stop == "a\0"


def test_prefix_from_key_and_every_key_ranges() -> None:
    prefix = Bounds(b"app/", b"app0")  # etcdctl --prefix: the last byte incremented
    assert prefix.contains("app/x") and not prefix.contains("app0") and not prefix.contains("apq")
    from_key = Bounds(b"m", b"\0")
    assert from_key.end is None and from_key.contains("z") and not from_key.contains("l")
    everything = Bounds(b"\0", b"\0")
    assert everything.start == "" and everything.end is None and everything.contains("\x01")


def test_a_key_must_be_given_and_may_be_any_bytes() -> None:
    with pytest.raises(EtcdError, match="etcdserver: key is not provided") as refused:
        key_text(b"")
    assert refused.value.code is grpc.StatusCode.INVALID_ARGUMENT
    for key in (b"\xff\xfe", b"/etcdctl-check-perf/\x8a\xc3\xa9\x00\x00", "mañana".encode()):
        assert kv_message(key_text(key), KeyValue(key_text(key), 1, 1, 1)).key == key
        assert value_bytes(key_text(key)) == key


def test_values_go_out_as_their_text() -> None:
    assert value_bytes("héllo") == "héllo".encode() and value_bytes({"a": [1, 2]}) == b'{"a":[1,2]}'


@pytest.mark.parametrize(("failure", "code", "message"), [
    (NoLeaderError(), grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader"),
    (OutcomeUnknownError("waited 5 s"), grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out"),
    (NotAppliedError("leader changed"), grpc.StatusCode.UNAVAILABLE, "etcdserver: leader changed"),
    (CompactedError(3, 7), grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"),
    (RequestRefused(404, "unknown", "lease 5 does not exist", lease=5), grpc.StatusCode.NOT_FOUND,
     "etcdserver: requested lease not found"),
    (RequestRefused(503, "no_leader", "the leader's address is not known"), grpc.StatusCode.UNAVAILABLE,
     "etcdserver: no leader"),
    (MembershipRefused("unknown", "no member 'x'"), grpc.StatusCode.NOT_FOUND, "etcdserver: member not found"),
    (MembershipRefused("not_learner", "a voter"), grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member"),
    (MembershipRefused("not_caught_up", "lags"), grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: can only promote a learner member which is in sync with leader"),
    (MembershipRefused("last_voter", "the last voter"), grpc.StatusCode.FAILED_PRECONDITION,
     "etcdserver: the last voter"),
])
def test_node_failures_become_etcds_errors(failure: Exception, code: grpc.StatusCode, message: str) -> None:
    error = translate(failure)
    assert error is not None and (error.code, error.message) == (code, message)


def test_a_bug_is_not_dressed_as_an_etcd_error() -> None:
    assert translate(KeyError("x")) is None


async def test_the_etcd_apis_writes_may_be_gathered_and_the_http_apis_may_not() -> None:
    """grpc.aio hands calls over one per loop iteration, so a leader gathers etcd's writes for a
    few milliseconds (RaftGroup.propose); HTTP requests come many to an iteration and never wait."""
    from test_api import FakeNode

    node = FakeNode()
    gate = Gate(node)
    assert (await Admission(gate).propose(Put("etcd", "v")))["ok"]
    assert (await gate.propose_as(None, Put("http", "v")))["ok"]
    assert node.gathered == [True, False]


async def test_the_etcd_apis_linearizable_reads_may_be_gathered() -> None:
    """Its `KV.Range` calls come one per loop iteration too: their read barrier may wait to share
    a ReadIndex round (RaftGroup.read_barrier); a serializable one asks for none. A put that keeps
    the key's value reads it first, the same way."""
    from test_api import FakeNode

    node = FakeNode()
    kv = KVService(node, _Header(), Admission(Gate(node)))  # type: ignore[arg-type]
    await kv.Range(rpc_pb2.RangeRequest(key=b"k"), None)
    await kv.Range(rpc_pb2.RangeRequest(key=b"k", serializable=True), None)
    assert node.gathered_reads == [True]
    await kv.Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), None)
    await kv.Put(rpc_pb2.PutRequest(key=b"k", ignore_value=True), None)
    assert node.gathered_reads == [True, True]
    assert node.kv.get("k").value == "v"


async def test_a_txns_range_counts_and_sorts_every_key_and_a_txn_that_only_reads_is_a_read() -> None:
    """etcd's txn answers a range with the count of every key in it and sorts them all before its
    limit; a txn of ranges alone is served as a read (a read barrier, no log entry)."""
    from test_api import FakeNode

    node = FakeNode()
    kv = KVService(node, _Header(), Admission(Gate(node)))  # type: ignore[arg-type]
    keys = 10_050  # more than the HTTP API's own range limit
    for first in range(0, keys, 128):
        puts = [rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=f"big/{i:05}".encode(), value=f"{i:05}".encode()))
                for i in range(first, min(first + 128, keys))]
        await kv.Txn(rpc_pb2.TxnRequest(success=puts), None)
    by_value = rpc_pb2.RangeRequest(key=b"big/", range_end=b"big0", limit=2, sort_target=rpc_pb2.RangeRequest.VALUE,
                                    sort_order=rpc_pb2.RangeRequest.DESCEND)
    proposals, barriers = len(node.proposals), node.barriers
    read = await kv.Txn(rpc_pb2.TxnRequest(success=[rpc_pb2.RequestOp(request_range=by_value)]), None)
    answer = read.responses[0].response_range
    assert (answer.count, answer.more, [k.value for k in answer.kvs]) == (keys, True, [b"10049", b"10048"])
    assert (len(node.proposals), node.barriers) == (proposals, barriers + 1)
    put = rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(key=b"big/x", value=b"x"))
    written = await kv.Txn(rpc_pb2.TxnRequest(success=[put, rpc_pb2.RequestOp(request_range=by_value)]), None)
    assert written.responses[1].response_range.count == keys + 1 and len(node.proposals) == proposals + 1


class _Header:
    def header(self, revision: int | None = None) -> rpc_pb2.ResponseHeader:
        return rpc_pb2.ResponseHeader(revision=revision or 0)


async def test_a_leases_time_to_live_is_its_whole_seconds_left_rounded_down() -> None:
    """As etcd's: 59 while 59.7 s are left (and -1 for no lease)."""
    from raftkv.etcd.lease import LeaseService

    class Leader:
        async def lease_info(self, lease_id: int) -> dict:
            return {"remaining": 59.7, "ttl": 60, "keys": ["k"]}

    leases = LeaseService(Leader(), _Header(), None, None)  # type: ignore[arg-type]
    answer = await leases.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=7, keys=True), None)
    assert (answer.TTL, answer.grantedTTL, list(answer.keys)) == (59, 60, [b"k"])
    assert (await leases.LeaseTimeToLive(rpc_pb2.LeaseTimeToLiveRequest(ID=0), None)).TTL == -1


def test_member_numbers_are_stable_and_never_zero() -> None:
    assert number_of("node1") == number_of("node1") != number_of("node2")
    assert all(number_of(f"n{i}") > 0 for i in range(1000))


def test_the_etcd_address_is_configured_and_advertised(tmp_path: Path) -> None:
    members = {"n1": Member("n1", "10.0.0.1", 3000, 4000)}
    assert NodeConfig("n1", tmp_path, members).etcd_endpoint is None  # not served unless asked
    local = NodeConfig("n1", tmp_path, members, listen_etcd="10.0.0.1:2379")
    assert local.etcd_listen_address() == ("10.0.0.1", 2379) and local.etcd_endpoint == "http://10.0.0.1:2379"
    everywhere = NodeConfig("n1", tmp_path, members, listen_etcd="0.0.0.0:2379")
    assert everywhere.etcd_endpoint == "http://10.0.0.1:2379"  # clients dial the member's address
    assert Listener("0.0.0.0", 2379, "n1's etcd API port") in node_listeners(everywhere)
    with pytest.raises(ConfigError, match="host:port"):
        NodeConfig("n1", tmp_path, members, listen_etcd="10.0.0.1").etcd_listen_address()


async def test_the_etcd_port_listens_as_soon_as_the_http_port_does(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A client (the benchmark, a readiness probe) that finds the HTTP port answering dials the etcd
    port next; were it still closed, gRPC's reconnect backoff would refuse that client's calls for
    seconds. Both ports must listen before the group starts, which this holds back."""
    http_port, raft_port, etcd_port = free_ports(3)
    cfg = NodeConfig("n1", tmp_path, {"n1": Member("n1", "127.0.0.1", http_port, raft_port)},
                     listen_etcd=f"127.0.0.1:{etcd_port}")
    group_may_start, group_started = asyncio.Event(), asyncio.Event()
    start = NodeHost.start

    async def held_start(node: NodeHost) -> None:
        await group_may_start.wait()
        await start(node)
        group_started.set()

    monkeypatch.setattr(NodeHost, "start", held_start)
    monkeypatch.setattr(node_server, "tune_gc", HeapWatch)  # the real one freezes the test process's heap
    serving = asyncio.ensure_future(node_server.serve(cfg))
    try:
        assert await _listens(http_port, serving), "the HTTP port never listened"
        assert await _listens(etcd_port, serving), "the HTTP port listens and the etcd port does not"
    finally:
        group_may_start.set()
        await asyncio.wait_for(group_started.wait(), 10)  # then a cancel stops the node as SIGTERM does
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().remove_signal_handler(sig)


async def _listens(port: int, serving: asyncio.Future, timeout_s: float = 10.0) -> bool:
    """Whether the node running as `serving` accepts a connection on `port` within `timeout_s`
    (it is asked once, right away, when `serving` has already stopped)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if serving.done() or asyncio.get_running_loop().time() > deadline:
                return False
            await asyncio.sleep(0.02)
        else:
            writer.close()
            return True


def test_a_large_revision_is_cut_into_fragments_of_bounded_size() -> None:
    big = kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", value=b"x" * (MAX_FRAGMENT_BYTES // 3)))
    parts = _fragments([big] * 7)
    assert [len(p) for p in parts] == [2, 2, 2, 1]
    assert all(sum(e.ByteSize() for e in p) <= MAX_FRAGMENT_BYTES for p in parts)
    huge = kv_pb2.Event(kv=kv_pb2.KeyValue(key=b"k", value=b"x" * (2 * MAX_FRAGMENT_BYTES)))
    assert _fragments([huge, big]) == [[huge], [big]]  # an event larger than a fragment goes alone
    assert _fragments([]) == [[]]  # a progress notice: one empty response


_BYTES = st.lists(st.sampled_from([b"a", b"/", b"\xd0", b"\xbf", b"\xc0", b"\xd1\x81", b"\xe4\xb8\xad", b"\xff"]),
                  max_size=4).map(b"".join)


@given(start=_BYTES, end=_BYTES.filter(bool), key=_BYTES.filter(bool))
def test_a_key_is_in_an_etcd_range_by_its_bytes_and_under_the_watchs_text_prefix(start: bytes, end: bytes,
                                                                                 key: bytes) -> None:
    """Bounds compare bytes; a ranged watch asks the node for the keys under the text prefix the
    bounds share, then filters them by Bounds: that prefix must hold every key of the range."""
    bounds = Bounds(start or b"\0", end)
    inside = (start or b"\0") <= key < end
    assert bounds.contains(as_text(key)) == inside
    if inside:
        assert as_text(key).startswith(_shared_prefix(bounds.start, as_text(end)))
