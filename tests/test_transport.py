"""Tests for raftkv.transport: the wire codec, the fault rules, and the two transports.

The behavioural tests run against both TcpTransport (on 127.0.0.1 ephemeral ports) and the
in-memory twin through one small harness, `Net`, so the twin is held to the same contract.
Wire-only behaviour (garbage frames, mutual TLS) is tested on TCP alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from certs import make_test_certs

from raftkv.core.messages import (
    MESSAGE_TYPES,
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    HeartbeatRequest,
    HeartbeatResponse,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    Snapshot,
    SnapshotMeta,
    SnapshotRequest,
    TimeoutNow,
    TransferRequest,
    VoteRequest,
    VoteResponse,
)
from raftkv.node.peer_messages import (
    PEER_MESSAGE_TYPES,
    EntryTraces,
    ProposeAnswer,
    ProposeForward,
    TracedProposeForward,
)
from raftkv.transport import (
    CodecError,
    LinkFaults,
    MemoryNetwork,
    MemoryTransport,
    TcpOptions,
    TcpTransport,
    codec,
    decode,
    encode,
    make_mtls_contexts,
)

pytestmark = [
    pytest.mark.timeout(60),
    # Overriding event_loop_policy (below) is deprecated in favour of the conftest-only
    # pytest_asyncio_loop_factories hook; this module keeps its loop choice to itself for now.
    pytest.mark.filterwarnings("ignore:Overriding the \"event_loop_policy\" fixture:DeprecationWarning"),
]
WAIT_S = 10.0

H = {"src": "a", "dst": "b", "term": 7}
SAMPLES: list[Message] = [
    VoteRequest(**H, last_log_index=10, last_log_term=6),
    VoteRequest(**H, last_log_index=0, last_log_term=0, pre_vote=True, transfer=True),
    VoteResponse(**H, granted=True),
    VoteResponse(**H, granted=False, pre_vote=True),
    AppendRequest(**H, prev_log_index=5, prev_log_term=6),  # empty entries: a probe
    AppendRequest(
        **H,
        prev_log_index=5,
        prev_log_term=6,
        commit=4,
        entries=(
            Entry(7, 6, EntryKind.NOOP),
            Entry(7, 7, EntryKind.NORMAL, b"x" * 100),
            Entry(7, 8, EntryKind.CONF_CHANGE, b"add_voter:d"),
            Entry(7, 9, EntryKind.NORMAL, os.urandom(2 << 20)),  # big data
        ),
    ),
    AppendResponse(**H, success=True, match_index=9),
    AppendResponse(**H, success=False, reject_index=5, conflict_term=3, conflict_index=2),
    HeartbeatRequest(**H, commit=9, read_round=3),
    HeartbeatResponse(**H, read_round=3),
    SnapshotRequest(**H, snapshot=Snapshot(SnapshotMeta(100, 6, ConfState(("a", "b"), ("c",))), b"img")),
    SnapshotRequest(**H, snapshot=Snapshot(SnapshotMeta(0, 0, ConfState(())))),
    TimeoutNow(**H),
    TransferRequest(**H, target="c"),
    ReadIndexRequest(**H, ctx=b"\x00read-1"),
    ReadIndexResponse(**H, ctx=b"", index=12, ok=False),
    ProposeForward(**H, ticket=7, datas=(b"put-a", b"", b"x" * 1000), oldest=5),
    ProposeForward(**H, ticket=0, datas=(), oldest=0),
    ProposeAnswer(**H, ticket=7, index=41),
    ProposeAnswer(**H, ticket=8, index=0, error="not the leader"),
    TracedProposeForward(**H, ticket=9, datas=(b"put-a", b"put-b"), oldest=9,
                         traceparents=(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", b"")),
    EntryTraces(**H, first_index=41, traceparents=(b"", b"00-0af7651916cd43dd8448eb211c80319c-00f067aa0ba902b7-01")),
]


def hb(src: str, dst: str, i: int) -> HeartbeatRequest:
    return HeartbeatRequest(src=src, dst=dst, term=1, commit=i)


# ---- codec ------------------------------------------------------------------------------------


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m in SAMPLES} == set(MESSAGE_TYPES) | set(PEER_MESSAGE_TYPES) == set(codec.message_types())


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_codec_round_trip(message: Message) -> None:
    data = encode(message)
    assert isinstance(data, bytes)
    back = decode(data)
    assert back == message
    assert type(back) is type(message)
    for e in getattr(back, "entries", ()):
        assert isinstance(e.kind, EntryKind)


def test_codec_is_compact() -> None:
    assert len(encode(hb("node1", "node2", 12345))) < 24


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x92\x05",  # truncated array
        encode(hb("a", "b", 1))[:-1],  # truncated message
        b"\x05",  # not an array
        b"\x90",  # empty array
        b"\x93\x63\xa1a\xa1b",  # unknown tag 99
        b"\x93\x05\xa1a\xa1b",  # HeartbeatRequest with too few fields
        b"\x96\x05\xa1a\xa1b\xa17\x01\x00",  # term is a str
        b"\x96\x05\xa1a\xa1b\xc3\x01\x00",  # term is a bool
        b"\x98\x03\xa1a\xa1b\x01\x00\x00\x05\x00",  # entries is an int
        b"\x98\x03\xa1a\xa1b\x01\x00\x00\x91\x94\x01\x01\x09\xc4\x00\x00",  # unknown entry kind 9
        b"\x98\x03\xa1a\xa1b\x01\x00\x00\x91\x93\x01\x01\x00\x00",  # entry 3-array
        b"\x95\x07\xa1a\xa1b\x01\x95\x01\x01\x91\x01\x90\xc4\x00",  # voters not strings
        b"\x96\x0c\xa1a\xa1b\x01\x01\x92\xc4\x00\xa1x",  # a forwarded write that is a str
    ],
)
def test_codec_rejects_malformed_frames(frame: bytes) -> None:
    with pytest.raises(CodecError):
        decode(frame)


def test_codec_refuses_to_encode_what_a_peer_would_reject() -> None:
    with pytest.raises(CodecError):
        encode(Message(src="a", dst="b", term=1))  # no wire tag
    with pytest.raises(CodecError):
        encode(ReadIndexRequest(src="a", dst="b", term=1, ctx="str, not bytes"))  # type: ignore[arg-type]
    with pytest.raises(CodecError):
        encode(HeartbeatRequest(src="a", dst="b", term=True, commit=1))
    with pytest.raises(CodecError):
        encode(ProposeForward(src="a", dst="b", term=1, ticket=1, datas=(b"ok", "str"), oldest=1))  # type: ignore[arg-type]


def test_frame_decoder_reassembles_any_split_of_the_stream() -> None:
    """TCP may cut the byte stream anywhere; a snapshot crosses as several chunk frames."""
    entries = (Entry(1, 1, EntryKind.NORMAL, b"x" * 3000), Entry(1, 2, EntryKind.NOOP))
    append = AppendRequest(src="a", dst="b", term=1, prev_log_index=0, prev_log_term=0, entries=entries)
    msgs = [hb("a", "b", 1), append, SAMPLES[10], hb("a", "b", 2)]
    stream = [codec.hello_frame("a")]
    for m in msgs:
        if isinstance(m, SnapshotRequest):
            chunks = codec.ChunkStream(m, stream_id=1, chunk_bytes=2)
            while not chunks.done:
                stream += chunks.next_frame()
        else:
            stream += (codec.message_frame(encode(m)), encode(m))
    wire = b"".join(stream)
    rng = random.Random(3)
    for step in (1, 7, None):
        got: list[Message] = []
        decoder = codec.FrameDecoder(lambda p, m, n, got=got: got.append(m), 64 << 20, 1 << 20)
        pos = 0
        while pos < len(wire):
            size = step or rng.randint(1, 5000)
            decoder.feed(wire[pos : pos + size])
            pos += size
        assert got == msgs and decoder.peer == "a"


# ---- fault rules ------------------------------------------------------------------------------


def test_faults_partition_cut_and_describe() -> None:
    seen: list[tuple[str, str]] = []
    f = LinkFaults(random.Random(1), on_drop=lambda m, d: seen.append((type(m).__name__, d)))
    f.set_partitioned(True, ["b"])
    f.cut_outbound("c")
    f.cut_inbound("d")
    assert (f.should_drop_outbound("b"), f.should_drop_inbound("b")) == (True, True)
    assert (f.should_drop_outbound("c"), f.should_drop_inbound("c")) == (True, False)
    assert (f.should_drop_outbound("d"), f.should_drop_inbound("d")) == (False, True)
    assert not f.should_drop_outbound("e")
    f.record_drop(hb("a", "b", 1), "outbound")
    f.record_drop(hb("b", "a", 1), "inbound")
    assert seen == [("HeartbeatRequest", "outbound"), ("HeartbeatRequest", "inbound")]
    f.set_delay(25, "b")
    f.set_loss(10)
    d = json.loads(json.dumps(f.describe()))
    assert d["partitioned"] == ["b"] and d["cut_outbound"] == ["c"] and d["cut_inbound"] == ["d"]
    assert d["dropped"] == {"b": {"outbound": 1, "inbound": 1}}
    assert d["delay_ms"] == {"b": 25.0} and d["loss_percent"] == {"*": 10.0}
    assert f.delay_seconds("b") == 0.025 and f.delay_seconds("c") == 0.0
    f.set_partitioned(True)  # everyone, as POST /simulate-partition without peers
    assert f.should_drop_outbound("zz") and f.should_drop_inbound("zz")
    f.set_partitioned(False)
    f.set_loss(0)
    assert not any(f.should_drop_outbound(p) or f.should_drop_inbound(p) for p in "bcdz")


def test_faults_are_deterministic_and_callbacks_cannot_break_them() -> None:
    def boom(m: Message, d: str) -> None:
        raise RuntimeError("observer bug")

    f1, f2 = LinkFaults(random.Random(42), on_drop=boom), LinkFaults(random.Random(42))
    f1.set_loss(50, "b")
    f2.set_loss(50, "b")
    draws = [f1.should_drop_outbound("b") for _ in range(200)]
    assert draws == [f2.should_drop_outbound("b") for _ in range(200)]
    assert 60 < sum(draws) < 140
    f1.record_drop(hb("a", "b", 1), "outbound")  # must not raise
    with pytest.raises(ValueError):
        f1.set_loss(101)


# ---- a harness that runs the same scenario on either transport ---------------------------------


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def event_loop_policy(request: pytest.FixtureRequest) -> asyncio.AbstractEventLoopPolicy:
    """Run the async tests on both loops: raftkv runs on uvloop where it can, whose transports
    are not asyncio.Transport subclasses."""
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.EventLoopPolicy()
    return asyncio.DefaultEventLoopPolicy()


class Net:
    """A few nodes on one transport kind, each recording what it receives and when."""

    def __init__(self, kind: str, seed: int = 1, ssl: tuple[Any, Any] = (None, None), **opts: Any) -> None:
        self.kind, self.seed, self.ssl, self.opts = kind, seed, ssl, opts
        self.memory = MemoryNetwork()
        self.nodes: dict[str, Any] = {}
        self.faults: dict[str, LinkFaults] = {}
        self.ports: dict[str, int] = {}
        self.inbox: dict[str, list[Message]] = {}
        self.times: dict[str, list[float]] = {}

    async def up(self, *ids: str) -> None:
        """Start (or restart, on the same address) nodes and connect them with the others."""
        for node_id in ids:
            faults = self.faults.setdefault(node_id, LinkFaults(random.Random(self.seed)))
            inbox, times = self.inbox.setdefault(node_id, []), self.times.setdefault(node_id, [])
            if self.kind == "tcp":
                port = self.ports.get(node_id, 0)
                t: Any = TcpTransport(node_id, "127.0.0.1", port, {}, faults, *self.ssl, TcpOptions(**self.opts))
            else:
                t = MemoryTransport(self.memory, node_id, [], faults, serialize=True, **self.opts)
            now = asyncio.get_running_loop().time
            await t.start(lambda m, i=inbox, ts=times, now=now: (i.append(m), ts.append(now())))
            self.ports[node_id] = getattr(t, "listen_port", 0)
            self.nodes[node_id] = t
            for other_id, other in self.nodes.items():
                if other_id != node_id:
                    t.add_peer(other_id, ("127.0.0.1", self.ports[other_id]))
                    other.add_peer(node_id, ("127.0.0.1", self.ports[node_id]))

    async def down(self, node_id: str) -> None:
        await self.nodes.pop(node_id).close()

    async def close(self) -> None:
        for node_id in list(self.nodes):
            await self.down(node_id)

    def got(self, dst: str, src: str) -> list[int]:
        """The `commit` numbers of heartbeats dst received from src, in arrival order."""
        return [m.commit for m in self.inbox[dst] if m.src == src and isinstance(m, HeartbeatRequest)]

    def dropped(self, node: str, peer: str, direction: str) -> int:
        return self.faults[node].dropped.get(peer, {}).get(direction, 0)


async def wait_for(cond: Callable[[], bool], timeout: float = WAIT_S) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def quiet(net: Net, seconds: float = 0.2) -> None:
    """Let queued traffic drain, then a little more, before asserting that nothing arrived."""
    await wait_for(lambda: all(p["send_queue"] == 0 for t in net.nodes.values() for p in t.stats()["peers"].values()))
    await asyncio.sleep(seconds)


@pytest.fixture(params=["tcp", "memory"])
async def make_net(request: pytest.FixtureRequest):
    """Build Nets of the parametrized kind; all are closed when the test ends."""
    made: list[Net] = []

    def make(**opts: Any) -> Net:
        made.append(Net(request.param, **opts))
        return made[-1]

    yield make
    for n in made:
        await n.close()


@pytest.fixture
def net(make_net: Callable[..., Net]) -> Net:
    return make_net()


async def test_three_nodes_exchange_messages_in_order(net: Net) -> None:
    await net.up("a", "b", "c")
    for i in range(300):
        for src in "abc":
            net.nodes[src].send([hb(src, dst, i) for dst in "abc" if dst != src])
        if i % 50 == 0:
            await asyncio.sleep(0)
    pairs = [(s, d) for s in "abc" for d in "abc" if s != d]
    await wait_for(lambda: all(len(net.got(d, s)) == 300 for s, d in pairs))
    assert all(net.got(d, s) == list(range(300)) for s, d in pairs)
    stats = json.loads(json.dumps(net.nodes["a"].stats()))
    assert stats["peers"]["b"]["frames_sent"] == 300 and stats["peers"]["b"]["frames_received"] == 300
    assert stats["peers"]["b"]["connected"] is True


LINK_ROW_KEYS = {
    "address", "connected", "frames_sent", "bytes_sent", "send_queue", "reconnects", "dropped_queue_full",
    "last_error", "frames_received", "bytes_received",
}  # fmt: skip
OWN_ROW_KEYS = {"tcp": {"snapshot_streaming", "connect_failures", "dropped_oversize"}, "memory": {"lost"}}
OWN_TOP_KEYS = {"tcp": {"inbound_connections"}, "memory": set()}


async def test_stats_keep_their_shape_on_both_transports(net: Net) -> None:
    """Both transports count through the same peer table (links.py); /raft-state, /metrics and the
    dashboard read these keys, each transport adding only its own."""
    await net.up("a", "b")
    net.nodes["a"].send([hb("a", "b", 1), hb("a", "nobody", 2)])
    await wait_for(lambda: net.got("b", "a") == [1])
    stats = json.loads(json.dumps(net.nodes["a"].stats()))
    assert set(stats) == {"node_id", "listen", "tls", "unknown_destination", "peers", "faults"} | OWN_TOP_KEYS[net.kind]
    assert stats["unknown_destination"] == 1 and set(stats["peers"]) == {"b"}
    row = stats["peers"]["b"]
    assert set(row) == LINK_ROW_KEYS | OWN_ROW_KEYS[net.kind]
    assert (row["frames_sent"], row["send_queue"], row["connected"], row["last_error"]) == (1, 0, True, None)
    net.nodes["b"].remove_peer("a")  # b now only hears from a: a row without a link
    assert not net.nodes["b"].reachable("a") and net.nodes["a"].reachable("b")
    inbound_only = net.nodes["b"].stats()["peers"]["a"]
    assert set(inbound_only) == {"address", "connected", "frames_received", "bytes_received"}
    assert (inbound_only["connected"], inbound_only["frames_received"]) == (False, 1)


async def test_reconnects_after_the_receiver_restarts(net: Net) -> None:
    await net.up("a", "b")
    net.nodes["a"].send([hb("a", "b", 0)])
    await wait_for(lambda: net.got("b", "a") == [0])
    await net.down("b")
    net.inbox["b"].clear()
    for i in range(1, 6):  # sent while b is down: lost or delivered later, never out of order
        net.nodes["a"].send([hb("a", "b", i)])
        await asyncio.sleep(0.01)
    await net.up("b")
    i = 6
    while not net.got("b", "a"):
        net.nodes["a"].send([hb("a", "b", i)])
        i += 1
        await asyncio.sleep(0.02)
        assert i < 500, "no message got through after the restart"
    net.nodes["a"].send([hb("a", "b", j) for j in range(1000, 1010)])
    await wait_for(lambda: net.got("b", "a")[-1:] == [1009])
    got = net.got("b", "a")
    assert got == sorted(set(got)) and got[-10:] == list(range(1000, 1010))
    if net.kind == "tcp":
        assert net.nodes["a"].stats()["peers"]["b"]["reconnects"] >= 1


async def test_partition_drops_both_directions_and_heals(net: Net) -> None:
    await net.up("a", "b", "c")
    net.faults["a"].set_partitioned(True, ["b"])
    for src, dst in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")]:
        net.nodes[src].send([hb(src, dst, 1)])
    await wait_for(lambda: net.got("c", "a") == [1] and net.got("a", "c") == [1])
    await wait_for(lambda: net.dropped("a", "b", "inbound") == 1)  # b sent it; a's side cut it
    assert net.dropped("a", "b", "outbound") == 1
    await quiet(net)
    assert net.got("b", "a") == [] and net.got("a", "b") == []

    net.faults["a"].set_partitioned(False, ["b"])
    net.nodes["a"].send([hb("a", "b", 2)])
    net.nodes["b"].send([hb("b", "a", 2)])
    await wait_for(lambda: net.got("b", "a") == [2] and net.got("a", "b") == [2])

    net.faults["a"].set_partitioned(True)  # isolate a from everyone
    net.nodes["c"].send([hb("c", "a", 3)])
    net.nodes["a"].send([hb("a", "c", 3)])
    await wait_for(lambda: net.dropped("a", "c", "inbound") == 1)
    net.faults["a"].set_partitioned(False)
    net.nodes["c"].send([hb("c", "a", 4)])
    await wait_for(lambda: net.got("a", "c") == [1, 4])
    assert net.got("c", "a") == [1]


async def test_one_way_cuts(net: Net) -> None:
    await net.up("a", "b", "c")
    net.faults["a"].cut_outbound("b")
    net.faults["a"].cut_inbound("c")
    for src, dst in [("a", "b"), ("b", "a"), ("a", "c"), ("c", "a")]:
        net.nodes[src].send([hb(src, dst, 1)])
    await wait_for(lambda: net.got("a", "b") == [1] and net.got("c", "a") == [1])
    await wait_for(lambda: net.dropped("a", "c", "inbound") == 1)
    await quiet(net)
    assert net.got("b", "a") == [] and net.got("a", "c") == []
    assert net.dropped("a", "b", "outbound") == 1


async def test_a_cut_also_loses_messages_already_queued(net: Net) -> None:
    await net.up("a", "b")
    net.faults["a"].set_delay(200, "b")
    net.nodes["a"].send([hb("a", "b", i) for i in range(5)])
    net.faults["a"].cut_outbound("b")  # the wire is cut while they sit in the delay line
    await wait_for(lambda: net.dropped("a", "b", "outbound") == 5)
    assert net.got("b", "a") == []


async def test_loss_percentage_is_honoured_with_a_seeded_rng(net: Net) -> None:
    await net.up("a", "b")
    net.faults["a"].set_loss(30, "b")
    n = 1000
    for i in range(n):
        net.nodes["a"].send([hb("a", "b", i)])
    await wait_for(lambda: len(net.got("b", "a")) + net.dropped("a", "b", "outbound") == n)
    rng = random.Random(net.seed)  # the same seed makes exactly the same decisions
    expected_drops = sum(rng.random() * 100 < 30 for _ in range(n))
    assert net.dropped("a", "b", "outbound") == expected_drops
    assert 250 <= expected_drops <= 350
    got = net.got("b", "a")
    assert got == sorted(got)


async def test_delay_holds_messages_and_keeps_order(net: Net) -> None:
    await net.up("a", "b")
    net.nodes["a"].send([hb("a", "b", -1)])  # warm up the connection
    await wait_for(lambda: net.got("b", "a") == [-1])
    net.faults["a"].set_delay(100, "b")
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(20):
        if i == 10:
            net.faults["a"].set_delay(0, "b")  # later messages must still queue behind earlier ones
        net.nodes["a"].send([hb("a", "b", i)])
        await asyncio.sleep(0.002)
    await wait_for(lambda: len(net.got("b", "a")) == 21)
    assert net.got("b", "a") == [-1, *range(20)]
    assert net.times["b"][1] - t0 >= 0.095


async def test_send_queue_is_bounded_and_drops_the_newest(make_net: Callable[..., Net]) -> None:
    net = make_net(max_queue_messages=10)
    await net.up("a", "b")
    net.nodes["a"].send([hb("a", "b", i) for i in range(25)])  # no await: the writer cannot run
    assert net.nodes["a"].stats()["peers"]["b"]["dropped_queue_full"] == 15
    await wait_for(lambda: len(net.got("b", "a")) == 10)
    await quiet(net)
    assert net.got("b", "a") == list(range(10))


async def test_an_unencodable_message_does_not_break_the_link(net: Net) -> None:
    await net.up("a", "b")
    net.nodes["a"].send([ReadIndexRequest(src="a", dst="b", term=1, ctx="not bytes")])  # type: ignore[arg-type]
    i = 0
    async with asyncio.timeout(WAIT_S):
        while not net.got("b", "a"):  # the TCP writer loses its batch and redials; memory drops one
            net.nodes["a"].send([hb("a", "b", i)])
            i += 1
            await asyncio.sleep(0.02)


async def test_big_snapshot_arrives_intact_while_heartbeats_flow(net: Net) -> None:
    await net.up("a", "b")
    data = os.urandom(5 << 20)
    image = Snapshot(SnapshotMeta(500, 3, ConfState(("a", "b"))), data)
    snap = SnapshotRequest(src="a", dst="b", term=3, snapshot=image)
    net.nodes["a"].send([snap])
    snapshots = lambda: [m for m in net.inbox["b"] if isinstance(m, SnapshotRequest)]  # noqa: E731
    i = 0
    async with asyncio.timeout(WAIT_S):
        while not snapshots():
            net.nodes["a"].send([hb("a", "b", i)])
            i += 1
            await asyncio.sleep(0)
    assert snapshots() == [snap]
    await wait_for(lambda: len(net.got("b", "a")) == i)
    assert net.got("b", "a") == list(range(i))
    if net.kind == "tcp":  # streamed in chunks: heartbeats sent after it overtook it
        position = net.inbox["b"].index(snap)
        assert position > 0, "heartbeats waited for the whole snapshot"


# ---- TCP only: what arrives on the wire --------------------------------------------------------


@pytest.fixture
async def tcp() -> Any:
    n = Net("tcp")
    yield n
    await n.close()


@pytest.mark.parametrize(
    "junk",
    [
        b"\x00\x00\x00\x08GARBAGE!",  # first frame is not a hello
        b"\x00\x00\x00\x05\x00RKV1",  # hello without a node id
        b"\x00\x00\x00\x06\x00RKV1x\xff\xff\xff\xff",  # hello, then a 4 GiB frame
        b"\x00\x00\x00\x06\x00RKV1x\x00\x00\x00\x00",  # hello, then an empty frame
        b"\x00\x00\x00\x06\x00RKV1x\x00\x00\x00\x04\x01\x93\x63\x00",  # undecodable message
        b"\x00\x00\x00\x06\x00RKV1x\x00\x00\x00\x02\x07\x00",  # unknown frame kind
    ],
)
async def test_garbage_closes_that_connection_and_the_server_keeps_serving(
    tcp: Net, junk: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await tcp.up("a", "b")
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.ports["b"])
    writer.write(junk)
    async with asyncio.timeout(WAIT_S):
        assert await reader.read(100) == b""  # the server closed it
    writer.close()
    assert any(r.levelname == "ERROR" and "closing inbound connection" in r.getMessage() for r in caplog.records)
    tcp.nodes["a"].send([hb("a", "b", 1)])
    await wait_for(lambda: tcp.got("b", "a") == [1])


async def test_an_idle_link_writes_on_the_senders_turn(tcp: Net) -> None:
    """A hop of a write's critical path costs no task switch: with the writer idle and nothing
    buffered, send() hands the frames to the connection before it returns, in order."""
    await tcp.up("a", "b")
    tcp.nodes["a"].send([hb("a", "b", 0)])
    await wait_for(lambda: tcp.got("b", "a") == [0])
    await asyncio.sleep(0.01)  # the writer is idle again
    sent = lambda: tcp.nodes["a"].stats()["peers"]["b"]["frames_sent"]  # noqa: E731
    before = sent()
    tcp.nodes["a"].send([hb("a", "b", 1), hb("a", "b", 2)])
    assert sent() == before + 2  # no await since send()
    await wait_for(lambda: tcp.got("b", "a") == [0, 1, 2])


async def test_a_sender_spoofing_another_node_is_cut_off(tcp: Net) -> None:
    await tcp.up("a", "b")
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.ports["b"])
    body = encode(hb("c", "b", 1))  # claims to be c on a connection that said hello as a
    writer.write(b"\x00\x00\x00\x06\x00RKV1a")
    writer.write((len(body) + 1).to_bytes(4, "big") + b"\x01" + body)
    async with asyncio.timeout(WAIT_S):
        assert await reader.read(100) == b""
    writer.close()
    assert tcp.inbox["b"] == []


async def test_a_peer_that_hangs_up_at_once_is_redialled_with_backoff() -> None:
    accepted = 0

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepted
        accepted += 1
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = TcpTransport("a", "127.0.0.1", 0, {"b": ("127.0.0.1", port)}, LinkFaults())
    await t.start(lambda m: None)
    try:
        t.send([hb("a", "b", 1)])
        await asyncio.sleep(1.0)
        assert 2 <= accepted <= 10, f"{accepted} connections in 1 s: backoff is not applied"
        assert t.stats()["peers"]["b"]["last_error"] == "closed by peer"
    finally:
        await t.close()
        server.close()


async def test_a_message_from_a_peer_that_was_down_ends_the_redial_backoff_at_once() -> None:
    """b was down long enough for a's redials to back off to a second; b's first message, on its own
    connection, tells a it is up: a's link to b is up again well within that second."""
    net = Net("tcp")
    try:
        await net.up("a", "b")
        await net.down("b")
        net.nodes["a"].send([hb("a", "b", 1)])
        await asyncio.sleep(3.0)  # redials at about 50, 100, 200, 400, 800 ms, then every second
        await net.up("b")
        net.nodes["b"].send([hb("b", "a", 1)])
        await wait_for(lambda: net.got("a", "b") == [1])
        heard = asyncio.get_running_loop().time()
        await wait_for(lambda: net.nodes["a"].reachable("b"))
        assert asyncio.get_running_loop().time() - heard < 0.3
    finally:
        await net.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    # The openssl CLI, not the `cryptography` package: it is not a dependency of the project.
    if shutil.which("openssl") is None:
        pytest.skip("mTLS test needs the openssl CLI to generate a CA and a node certificate")
    return make_test_certs(str(tmp_path_factory.mktemp("certs")))


async def test_mutual_tls(certs: tuple[str, str, str]) -> None:
    server_ctx, client_ctx = make_mtls_contexts(*certs)
    secure = Net("tcp", ssl=(server_ctx, client_ctx))
    try:
        await secure.up("a", "b")
        secure.nodes["a"].send([hb("a", "b", i) for i in range(50)])
        secure.nodes["b"].send([hb("b", "a", i) for i in range(50)])
        await wait_for(lambda: len(secure.got("b", "a")) == 50 and len(secure.got("a", "b")) == 50)
        assert secure.got("b", "a") == list(range(50))
        assert secure.nodes["a"].stats()["tls"] is True

        # A node without a certificate (plain TCP) cannot get anything in.
        intruder = TcpTransport("a", "127.0.0.1", 0, {"b": ("127.0.0.1", secure.ports["b"])}, LinkFaults())
        await intruder.start(lambda m: None)
        try:
            intruder.send([hb("a", "b", 999)])
            await asyncio.sleep(0.3)
            assert 999 not in secure.got("b", "a")
        finally:
            await intruder.close()
        secure.nodes["a"].send([hb("a", "b", 50)])
        await wait_for(lambda: secure.got("b", "a")[-1:] == [50])
    finally:
        await secure.close()
