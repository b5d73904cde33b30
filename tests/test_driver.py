"""The node driver in-process: its trackers' bookkeeping, and the real RaftGroup on in-memory links
and in-memory storage (no sockets, no files), so a whole cluster runs in a test in seconds.

A group is the same code a node process runs; only its transport (MemoryTransport) and storage
(MemoryStorage) are the in-memory twins of the TCP and disk ones.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftkv.core import (
    AppendRequest,
    AppendResponse,
    ConfState,
    Entry,
    EntryKind,
    HardState,
    HeartbeatRequest,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
)
from raftkv.kv import KVStateMachine, Put, Txn, TxnPut, encode, state_machine
from raftkv.kv.mvcc import MVCCStore
from raftkv.node import NodeConfig, NotAppliedError, OutcomeUnknownError, RaftGroup, compactor
from raftkv.node import group as group_module
from raftkv.node.compactor import Compactor
from raftkv.node.config import Member
from raftkv.node.errors import MembershipRefused
from raftkv.node.event_stream import EventHub
from raftkv.node.group import STALL_WARNING_EVERY_S
from raftkv.node.log_view import log_view
from raftkv.node.members import PROMOTE_MAX_LAG_ENTRIES, MemberService
from raftkv.node.metrics import FAST_BUCKETS, NodeMetrics
from raftkv.node.observe import GroupObserver
from raftkv.node.peer_messages import ProposeAnswer, ProposeForward
from raftkv.node.persist import DiskPump
from raftkv.node.proposals import (
    FORWARDED_TO,
    ForwardedBatch,
    ForwardLedger,
    PlacedWrite,
    ProposalTracker,
    QueuedWrite,
)
from raftkv.node.snapshots import pack_between_turns
from raftkv.node.status import StatusReporter
from raftkv.storage import MemoryStorage
from raftkv.transport import LinkFaults, MemoryNetwork

IDS = ("n1", "n2", "n3")


def members(ids: tuple[str, ...] = IDS) -> dict[str, Member]:
    return {node: Member(node, "127.0.0.1", 1, 2) for node in ids}


# ---- where a write waits (proposals.py) -------------------------------------------------------------


def tracker() -> ProposalTracker:
    return ProposalTracker("n1", timeout_s=5.0, metrics=NodeMetrics("n1"))


def test_a_write_displaced_by_another_terms_entry_is_answered_503_not_left_hanging() -> None:
    """An old leader's write waits at index 7 of term 2; after a leadership change a forwarded
    batch is placed at index 7 of term 3. The old write can never commit (the new leader holds no
    committed entry there), so it is answered "not applied" at once instead of never."""

    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        old, new = loop.create_future(), loop.create_future()
        proposals.place(7, PlacedWrite(2, old, 0.0, 1e18, None))
        proposals.forwarded[5] = _batch("n2", [new])
        proposals.place_forwarded(ProposeAnswer(src="n2", dst="n1", term=3, ticket=5, index=7), applied_index=0)
        with pytest.raises(NotAppliedError, match="not applied"):
            old.result()
        assert not new.done() and proposals.placed[7].term == 3 and proposals.placed[7].answer is new

    asyncio.run(scenario())


def _batch(leader: str, answers: list[asyncio.Future]) -> ForwardedBatch:
    return ForwardedBatch(leader, 3, [QueuedWrite(b"", a, 0.0) for a in answers], 1e18, 0.0)


def test_a_forwarded_batch_the_leader_refused_is_503() -> None:
    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        answers = [loop.create_future() for _ in range(3)]
        proposals.submit(b"w", loop.create_future(), 0.0)
        message = proposals.forward(proposals.take_batch(10), "n2", 3, now=0.0)
        proposals.forwarded[message.ticket] = _batch("n2", answers)
        assert proposals.forward_in_flight("n2", now=0.1, patience_s=0.2)
        proposals.place_forwarded(ProposeAnswer(src="n2", dst="n1", term=3, ticket=message.ticket, index=0,
                                                error="not the leader"), applied_index=0)
        for answer in answers:
            with pytest.raises(NotAppliedError, match="did not take the write: not the leader"):
                answer.result()
        assert not proposals.forward_in_flight("n2", now=0.1, patience_s=0.2) and not proposals.forwarded

    asyncio.run(scenario())


def test_writes_forwarded_to_a_leader_that_is_gone_are_504_at_once() -> None:
    """The leader was killed before it answered: a client must not wait out the whole timeout."""

    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        answer = loop.create_future()
        proposals.forwarded[3] = _batch("n2", [answer])
        proposals.leader_changed("n2")
        with pytest.raises(OutcomeUnknownError, match="stopped being the leader"):
            answer.result()
        assert not proposals.forwarded

    asyncio.run(scenario())


def test_a_placed_write_is_answered_by_its_entry_and_names_the_leader_that_took_it() -> None:
    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        mine, forwarded = loop.create_future(), loop.create_future()
        proposals.place(4, PlacedWrite(2, mine, 0.0, 1e18, None))
        proposals.place(5, PlacedWrite(2, forwarded, 0.0, 1e18, "n2"))
        assert proposals.applied(Entry(2, 4, EntryKind.NORMAL, b""), {"ok": True}, now=0.5)
        assert proposals.applied(Entry(2, 5, EntryKind.NORMAL, b""), {"ok": True}, now=0.5)
        assert mine.result() == {"ok": True} and forwarded.result() == {"ok": True, FORWARDED_TO: "n2"}

    asyncio.run(scenario())


def test_an_entry_wants_its_result_while_a_write_here_waits_for_it_or_a_forward_is_unanswered() -> None:
    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        assert not proposals.wants_result(4)  # another node's write: its result goes nowhere
        proposals.place(4, PlacedWrite(2, loop.create_future(), 0.0, 1e18, None))
        assert proposals.wants_result(4) and not proposals.wants_result(5)
        # An unanswered forward may be placed at any index, even one already applied (its answer
        # then comes from the results kept meanwhile): every entry's result is wanted.
        proposals.forwarded[3] = _batch("n2", [loop.create_future()])
        assert proposals.wants_result(5) and proposals.wants_result(1)

    asyncio.run(scenario())


def test_the_lock_free_histogram_renders_as_a_prometheus_histogram() -> None:
    metrics = NodeMetrics("n1")
    for seconds in (0.0001, 0.0005, 0.003, 0.003, 7.0):  # 0.0005 is on a bound: le is inclusive
        metrics.apply_seconds.observe(seconds)
    text = metrics.render()[0].decode()
    family = next(f for f in text_string_to_metric_families(text) if f.name == "raft_propose_to_apply_seconds")
    assert family.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples["raft_propose_to_apply_seconds_bucket", "0.0005"] == 2
    assert samples["raft_propose_to_apply_seconds_bucket", "0.005"] == 4
    assert samples["raft_propose_to_apply_seconds_bucket", str(FAST_BUCKETS[-1])] == 4
    assert samples["raft_propose_to_apply_seconds_bucket", "+Inf"] == 5
    assert samples["raft_propose_to_apply_seconds_count", None] == 5
    assert samples["raft_propose_to_apply_seconds_sum", None] == pytest.approx(7.0066)


def test_the_lock_free_labelled_series_render_as_prometheus_counters_and_histograms() -> None:
    metrics = NodeMetrics("n1")
    metrics.on_http_request("/kv/{key}", "GET", 200, 0.0002)
    metrics.on_http_request("/kv/{key}", "GET", 200, 0.002)
    metrics.on_http_request("/kv/{key}", "GET", 404, 0.0002)
    metrics.on_http_request("/txn", "POST", 200, 0.02)
    metrics.heartbeats_sent.inc(3)
    families = {f.name: f for f in text_string_to_metric_families(metrics.render()[0].decode())}
    requests = families["raft_http_requests"]
    assert requests.type == "counter"
    totals = {(s.labels["route"], s.labels["method"], s.labels["status"]): s.value for s in requests.samples}
    assert totals == {("/kv/{key}", "GET", "200"): 2, ("/kv/{key}", "GET", "404"): 1, ("/txn", "POST", "200"): 1}
    seconds = families["raft_http_request_seconds"]
    assert seconds.type == "histogram"
    samples = {(s.name, s.labels["route"], s.labels.get("le")): s.value for s in seconds.samples}
    assert samples["raft_http_request_seconds_count", "/kv/{key}", None] == 3
    assert samples["raft_http_request_seconds_bucket", "/kv/{key}", "0.0005"] == 2
    assert samples["raft_http_request_seconds_bucket", "/txn", "0.01"] == 0
    assert samples["raft_http_request_seconds_sum", "/txn", None] == pytest.approx(0.02)
    assert families["raft_heartbeats_sent"].samples[0].value == 3
    assert families["raft_heartbeats_received"].samples[0].value == 0  # unlabelled: shown from the start

# ---- a real cluster of groups in one process -------------------------------------------------------


class InProcessCluster:
    """Three RaftGroups on a MemoryNetwork, each with MemoryStorage: the driver a node runs, minus
    sockets and files. Fast ticks (5 ms) keep elections short."""

    def __init__(self, tmp_path: Path, ids: tuple[str, ...] = IDS, **config: object) -> None:
        self.network = MemoryNetwork()
        self.groups: dict[str, RaftGroup] = {}
        for node in ids:
            cfg = NodeConfig(node_id=node, data_dir=tmp_path / node, members=members(ids), tick_ms=5, **config)
            metrics = NodeMetrics(node)
            observer = GroupObserver(node, metrics, EventHub(node))
            faults = LinkFaults(on_drop=observer.on_drop)
            transport = self.network.transport(node, [p for p in ids if p != node], faults, serialize=True)
            self.groups[node] = RaftGroup(cfg, MemoryStorage(), transport, KVStateMachine(), metrics, observer,
                                          random.Random(f"{node}"))

    async def start(self) -> None:
        for group in self.groups.values():
            await group.transport.start(group.deliver)
            await group.start()

    async def stop(self) -> None:
        for group in self.groups.values():
            await group.stop()
            await group.transport.close()

    async def leader(self, timeout_s: float = 5.0) -> RaftGroup:
        async def agreed() -> RaftGroup:
            while True:
                leaders = [g for g in self.groups.values() if g.core.role is Role.LEADER]
                known = {g.leader_id for g in self.groups.values()}
                if len(leaders) == 1 and known == {leaders[0].id}:
                    return leaders[0]
                await asyncio.sleep(0.005)

        return await asyncio.wait_for(agreed(), timeout_s)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[InProcessCluster]:
    c = InProcessCluster(tmp_path)
    await c.start()
    yield c
    await c.stop()


async def test_an_in_process_cluster_elects_writes_through_any_node_and_reads_linearizably(
        cluster: InProcessCluster) -> None:
    leader = await cluster.leader()
    for i, group in enumerate(cluster.groups.values()):
        result = await group.propose(Put(f"k{i}", i))
        assert result["ok"] and (FORWARDED_TO in result) == (group is not leader), result
    for group in cluster.groups.values():
        await group.read_barrier()  # after it, the local state holds every write acknowledged before
        assert [group.kv.get(f"k{i}").value for i in range(3)] == [0, 1, 2]
    assert len({g.kv.digest() for g in cluster.groups.values()}) == 1
    peer_urls = {p: f"http://{p}" for p in IDS if p != leader.id}
    state = StatusReporter(leader, leader.metrics, lambda: peer_urls).raft_state()
    json.dumps(state)  # plain JSON data
    assert state["state"] == "leader" and state["commitIndex"] == state["lastApplied"] >= 4 and state["keys"] == 3
    assert {p["id"] for p in state["peers"]} == set(IDS) - {leader.id}
    assert all(p["matchIndex"] == state["logLength"] and p["state"] == "replicate" for p in state["peers"])


async def test_a_new_clusters_store_starts_at_etcds_first_revision(cluster: InProcessCluster) -> None:
    """Every founder's log ends its founding with kv.FoundStore: the empty store is at revision 1,
    as etcd's, and the first key is created at 2 (etcd's election recipe cannot wait behind a key
    created at 1: it would ask for the keys created at or below 0, which means no bound)."""
    leader = await cluster.leader()
    for group in cluster.groups.values():
        await group.read_barrier()
        assert group.kv.revision == 1 and len(group.kv) == 0
    assert (await leader.propose(Put("first", 1)))["revision"] == 2


async def test_an_in_process_cluster_transfers_leadership_on_force_election(cluster: InProcessCluster) -> None:
    leader = await cluster.leader()
    target = next(g for g in cluster.groups.values() if g is not leader)
    answer = await target.force_election()
    assert answer["term"] > answer["previousTerm"]
    assert (await cluster.leader()) is target
    assert (await leader.propose(Put("after", 1)))[FORWARDED_TO] == target.id


async def test_a_write_bound_to_a_leadership_is_never_forwarded(cluster: InProcessCluster) -> None:
    """A lease expiry decided by the leader of term T: appended by that leader in T, else refused,
    never carried out by another leader as a forwarded write would be."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    term, last = leader.core.term, leader.core.log.last_index()
    assert (await leader.propose(Put("mine", 1), leader_term=term))["ok"]
    for group, bound_to in ((leader, term - 1), (follower, term)):
        with pytest.raises(NotAppliedError, match="no longer leads"):
            await group.propose(Put("not-mine", 1), leader_term=bound_to)
    assert leader.core.log.last_index() == last + 1  # only the first one was appended
    assert leader.kv.get("not-mine") is None


async def test_a_forwarded_writes_answer_and_its_entry_leave_the_leader_in_one_send(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop turn's messages go to the transport together: the forwarding follower gets the
    ProposeAnswer and the AppendRequest carrying its write in one write on its link, the answer
    first."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    sends: list[list[Any]] = []
    send = leader.transport.send
    monkeypatch.setattr(leader.transport, "send", lambda messages: (sends.append(list(messages)), send(messages)))
    assert (await follower.propose(Put("together", 1)))["ok"]
    to_follower = [[type(m) for m in batch if m.dst == follower.id and (type(m) is ProposeAnswer or (
        type(m) is AppendRequest and m.entries))] for batch in sends]
    assert [ProposeAnswer, AppendRequest] in to_follower, to_follower


async def test_a_forward_that_comes_while_the_leaders_last_append_is_uncommitted_goes_in_the_next_append(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """As the leader's own writes do: the batch a follower forwards while the leader's last append
    waits for its acknowledgements is appended once that commits, with the leader's own writes that
    came meanwhile, in one append (one AppendRequest per follower, one fsync on each node)."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    for group in cluster.groups.values():
        group.tick_ms = 1000  # the wait is bounded by a tick: let it outlast the test's steps
    held: list[Any] = []
    forwards: list[ProposeForward] = []
    holding = True
    for group in cluster.groups.values():
        if group is not leader:
            send = group.transport.send

            def acknowledging(messages: list[Any], send: Any = send) -> None:
                forwards.extend(m for m in messages if type(m) is ProposeForward)
                if holding:
                    held.extend(m for m in messages if type(m) is AppendResponse)
                    messages = [m for m in messages if type(m) is not AppendResponse]
                send(messages)

            monkeypatch.setattr(group.transport, "send", acknowledging)
    proposed: list[int] = []
    propose = leader.core.propose
    monkeypatch.setattr(leader.core, "propose", lambda datas: (proposed.append(len(datas)), propose(datas))[1])

    first = asyncio.ensure_future(leader.propose(Put("first", 1)))
    while not held:
        await asyncio.sleep(0.001)
    forwarded = asyncio.ensure_future(follower.propose(Put("forwarded", 1)))
    own = asyncio.ensure_future(leader.propose(Put("own", 1)))
    while not forwards:
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)  # the leader has had turns enough to append them, had it not waited
    assert proposed == [1], "nothing more is appended while the first append is uncommitted"
    holding = False
    for m in held:
        leader.deliver(m)
    results = await asyncio.wait_for(asyncio.gather(first, forwarded, own), 5.0)
    assert all(r["ok"] for r in results) and proposed == [1, 2], proposed


def test_a_wake_set_again_for_a_time_already_due_on_uvloop_wakes_the_group_once() -> None:
    """For a time already due, uvloop's call_at hands back a plain Handle (no `when()`): a hold set
    again in the same loop iteration (two turns run back to back when the group is woken during
    one) must neither fail nor wake twice, and an earlier time replaces a later one."""
    uvloop = pytest.importorskip("uvloop")
    woken: list[float] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wake_at = group_module._WakeAt(lambda: woken.append(loop.time()))
        now = loop.time()
        wake_at.set(now)
        wake_at.set(now + 1)  # later: the wake already due stays
        wake_at.set(now - 1)  # earlier: replaces it
        await asyncio.sleep(0.05)
        wake_at.set(loop.time() + 10)
        wake_at.set(loop.time() + 0.01)  # earlier than the pending one: it wakes at this time instead
        await asyncio.sleep(0.1)

    uvloop.run(main())
    assert len(woken) == 2, woken


@pytest.mark.parametrize("kind", ["write", "read"])
async def test_requests_that_come_one_per_iteration_are_gathered_for_a_while_after_a_round(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """etcd's gRPC API hands a node one write or read per loop iteration. Once a round (the
    leader's append, a ReadIndex round) that carried more than one such request is done, the next
    wait until GATHER_S after it and share one round; a request of another source (HTTP) ends the
    wait at once, and after a round that carried one, a lone client's request goes at once."""
    gather_s = 0.5
    monkeypatch.setattr(group_module, "GATHER_S", gather_s)
    leader = await cluster.leader()
    for group in cluster.groups.values():
        group.tick_ms = 1000  # a write's wait is bounded by a tick: let it outlast GATHER_S
    rounds: list[int] = []  # how many requests each round carried
    if kind == "write":
        propose = leader.core.propose
        monkeypatch.setattr(leader.core, "propose", lambda datas: (rounds.append(len(datas)), propose(datas))[1])

        def ask(gathered: bool) -> asyncio.Future[Any]:
            return asyncio.ensure_future(leader.propose(Put("k", 1), gathered=gathered))
    else:
        start_round = leader.reads.start_round
        monkeypatch.setattr(leader.reads, "start_round",
                            lambda now: (rounds.append(len(leader.reads.queued)), start_round(now))[1])

        def ask(gathered: bool) -> asyncio.Future[Any]:
            return asyncio.ensure_future(leader.read_barrier(gathered=gathered))

    async def answered(*requests: asyncio.Future[Any]) -> None:
        await asyncio.wait_for(asyncio.gather(*requests), 5.0)

    await answered(ask(True), ask(True))
    first_round_done = time.monotonic()
    assert rounds == [2], rounds
    held = [ask(True)]
    await asyncio.sleep(0.05)
    held.append(ask(True))
    await asyncio.sleep(0.1)
    assert rounds == [2], "within GATHER_S of a round of two gathered requests: they wait"
    await answered(*held)
    assert rounds == [2, 2] and time.monotonic() - first_round_done >= gather_s - 0.05, rounds

    waiting = ask(True)
    await asyncio.sleep(0.05)
    assert rounds == [2, 2]
    started = time.monotonic()
    await answered(waiting, ask(False))
    assert rounds == [2, 2, 2], rounds
    assert time.monotonic() - started < gather_s / 2, "a request of another source takes the waiting ones along"

    started = time.monotonic()
    await answered(ask(True))
    assert rounds == [2, 2, 2, 1], rounds
    assert time.monotonic() - started < gather_s / 2, "the last round carried one gathered request: no wait"


async def test_a_traced_write_commits_in_its_trace_before_the_leader_announces_the_commit(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The leader's appends leave before it applies, so a follower can learn the commit, apply and
    answer its client before the leader applies: the `committed` event of the write's `propose`
    span is when the leader knew of the commit, never after the commit left it."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from raftkv.node.tracing import Tracing

    leader = await cluster.leader()
    exported, provider = InMemorySpanExporter(), TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    leader.tracing = leader.pump.tracing = Tracing(provider.get_tracer("test"), leader.id)
    index = leader.core.log.last_index() + 1
    announced: list[int] = []  # when the first message telling a follower of the commit left
    send = leader.transport.send

    def recording_send(messages: list[Any]) -> None:
        if not announced and any(type(m) in (AppendRequest, HeartbeatRequest) and m.commit >= index
                                 for m in messages):
            announced.append(time.time_ns())
        send(messages)

    monkeypatch.setattr(leader.transport, "send", recording_send)
    with trace.use_span(provider.get_tracer("test").start_span("client"), end_on_exit=True):
        assert (await leader.propose(Put("traced", 1)))["ok"]
    propose = next(s for s in exported.get_finished_spans() if s.name == "propose")
    assert propose.attributes["raftkv.index"] == index
    committed = next(e.timestamp for e in propose.events if e.name == "committed")
    assert announced and committed <= announced[0]
    provider.shutdown()


def test_an_unanswered_forward_is_sent_again_under_its_ticket_and_one_of_an_earlier_term_is_504() -> None:
    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        for i in range(2):
            proposals.submit(b"w%d" % i, loop.create_future(), 0.0)
        first = proposals.forward(proposals.take_batch(1), "n2", 3, now=0.0)
        second = proposals.forward(proposals.take_batch(1), "n2", 3, now=0.15)
        assert second.oldest == first.ticket  # the leader must still remember the first
        assert proposals.resends("n2", 3, now=0.1, patience_s=0.2) == []
        again = proposals.resends("n2", 3, now=0.25, patience_s=0.2)
        assert again == [first] and proposals.resends("n2", 3, now=0.3, patience_s=0.2) == []
        stale = proposals.forwarded[second.ticket].writes[0].answer
        assert proposals.resends("n2", 4, now=1.0, patience_s=0.2) == []  # n2 leads again, in term 4
        with pytest.raises(OutcomeUnknownError, match="earlier term"):
            stale.result()
        assert not proposals.forwarded

    asyncio.run(scenario())


def test_the_leader_answers_a_ticket_it_has_seen_with_the_answer_it_gave_within_its_term() -> None:
    ledger = ForwardLedger()
    forward = ProposeForward(src="n1", dst="n2", term=3, ticket=10, datas=(b"w",), oldest=10)
    assert ledger.known(forward, 3) is None
    answer = ProposeAnswer(src="n2", dst="n1", term=3, ticket=10, index=41)
    ledger.record([answer])
    assert ledger.known(forward, 3) == answer
    later = ProposeForward(src="n1", dst="n2", term=3, ticket=12, datas=(b"w",), oldest=11)
    assert ledger.known(later, 3) is None
    # 10 is answered, and forgotten; a copy that comes late (over a connection since replaced) is
    # refused, not appended again.
    late = ledger.known(forward, 3)
    assert late is not None and late.index == 0 and "below 11" in late.error
    assert ledger.known(forward, 4) is None  # a new term knows no ticket (the leader refuses other terms' forwards)


@pytest.mark.parametrize("lost", [ProposeForward, ProposeAnswer])
async def test_a_lost_forward_or_answer_costs_a_patience_not_the_timeout_and_appends_once(
        cluster: InProcessCluster, lost: type) -> None:
    """The follower sends the batch again under its ticket; the leader appends it once and answers
    the copy as it answered the original (a write applied twice would show as version 2)."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    sender = follower if lost is ProposeForward else leader
    send, dropped = sender.transport.send, []

    def losing(messages: list[Any]) -> None:
        if not dropped and (m := next((m for m in messages if type(m) is lost), None)) is not None:
            dropped.append(m)
            messages = [x for x in messages if x is not m]
        send(messages)

    sender.transport.send = losing  # type: ignore[method-assign]
    result = await asyncio.wait_for(follower.propose(Put("once", 1)), 2.0)  # the timeout is 5 s
    assert result["ok"] and dropped and result[FORWARDED_TO] == leader.id
    await follower.read_barrier()
    assert follower.kv.get("once").version == 1 and leader.kv.get("once").version == 1


async def test_a_copy_of_a_forward_from_an_earlier_term_is_never_appended(cluster: InProcessCluster) -> None:
    """A follower's batch was appended in term T, and a copy sent again arrives after the leadership
    moved on (a chaos run saw it: the answer lost on a lossy link, the same node re-elected): the
    new term's ledger has never seen its ticket, so the copy must be refused, not appended again
    (the write would be applied twice: version 2, and a later write undone)."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    send, sent = follower.transport.send, []

    def keeping(messages: list[Any]) -> None:
        sent.extend(m for m in messages if type(m) is ProposeForward)
        send(messages)

    follower.transport.send = keeping  # type: ignore[method-assign]
    assert (await follower.propose(Put("once", 1)))["ok"]
    successor = next(g for g in cluster.groups.values() if g is not leader and g is not follower)
    await successor.force_election()
    assert (await cluster.leader()) is successor and successor.core.term > sent[0].term
    successor.deliver(sent[0])  # the copy, late
    await successor.propose(Put("after", 1))  # a turn after the copy's
    for group in (successor, follower):
        await group.read_barrier()
        assert group.kv.get("once").version == 1


async def test_a_copy_that_arrives_in_the_same_turn_as_its_original_is_appended_once(
        cluster: InProcessCluster) -> None:
    """A leader held up for longer than a follower's patience (paused, a slow disk) finds the
    original and the copy sent again in one inbox."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    send, held = follower.transport.send, []

    def holding(messages: list[Any]) -> None:
        if not held:
            held.extend(m for m in messages if type(m) is ProposeForward)
            messages = [m for m in messages if type(m) is not ProposeForward]
        send(messages)

    follower.transport.send = holding  # type: ignore[method-assign]
    write = asyncio.ensure_future(follower.propose(Put("once", 1)))
    while not held:
        await asyncio.sleep(0.001)
    leader.deliver(held[0])
    leader.deliver(held[0])
    assert (await asyncio.wait_for(write, 2.0))["ok"]
    await leader.read_barrier()
    assert leader.kv.get("once").version == 1


def test_a_refused_copy_of_a_batch_sent_again_is_504_a_batch_sent_once_503() -> None:
    """An earlier copy of a batch sent again may be in the log even if the leader refuses this one
    (it moved to a new term, or restarted with an empty ledger): the outcome is unknown."""

    async def scenario() -> None:
        proposals, loop = tracker(), asyncio.get_running_loop()
        for name in (b"once", b"twice"):
            proposals.submit(name, loop.create_future(), 0.0)
        once = proposals.forward(proposals.take_batch(1), "n2", 3, now=0.0)
        twice = proposals.forward(proposals.take_batch(1), "n2", 3, now=0.1)
        proposals.forwarded[once.ticket].sent_at = 0.3  # only `twice` is due
        assert proposals.resends("n2", 3, now=0.35, patience_s=0.2) == [twice]
        answers = [proposals.forwarded[m.ticket].writes[0].answer for m in (once, twice)]
        for m in (once, twice):
            proposals.place_forwarded(ProposeAnswer(src="n2", dst="n1", term=4, ticket=m.ticket, index=0,
                                                    error="forwarded in term 3"), applied_index=0)
        with pytest.raises(NotAppliedError, match="did not take the write"):
            answers[0].result()
        with pytest.raises(OutcomeUnknownError, match="an earlier copy may have been appended"):
            answers[1].result()

    asyncio.run(scenario())


async def test_a_snapshot_is_packed_between_the_loops_other_work(cluster: InProcessCluster,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing holds the interpreter's lock: in a thread it made the loop wait out a switch
    interval at every turn. Packed on the loop, the loop's other work runs between every two parts."""
    leader = await cluster.leader()
    for i in range(40):
        await leader.propose(Put(f"k{i}", i))
    monkeypatch.setattr(state_machine, "SNAPSHOT_PART_ROWS", 5)
    turns, seen = 0, []
    frozen = leader.kv.snapshot_later

    def watched() -> Iterator[bytes]:
        parts = frozen()

        def each() -> Iterator[bytes]:
            for part in parts:
                seen.append(turns)
                yield part

        return each()

    async def count_turns() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    leader.kv.snapshot_later = watched  # type: ignore[method-assign]
    counting = asyncio.create_task(count_turns())
    before = leader.snapshots.snapshot_index
    leader.snapshots.every = 1
    await leader.propose(Put("now", 1))
    deadline = time.monotonic() + 5
    while leader.snapshots.snapshot_index == before and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    counting.cancel()
    assert leader.snapshots.snapshot_index > before and len(seen) > 8
    assert all(b > a for a, b in itertools.pairwise(seen)), seen


async def test_a_group_stopped_twice_at_once_stops_once(cluster: InProcessCluster) -> None:
    """A removed member's group stops itself, and then its process is told to stop: the second
    stop waits for the first instead of closing the disk twice."""
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    await follower.propose(Put("k", 1))
    await asyncio.gather(follower.stop(), follower.stop())
    await follower.stop()
    assert (await leader.propose(Put("k", 2)))["ok"]  # the other two carry on


async def test_a_lagging_follower_catches_up_through_a_snapshot_in_process(tmp_path: Path) -> None:
    c = InProcessCluster(tmp_path, snapshot_every=20, snapshot_retain_entries=2)
    await c.start()
    try:
        leader = await c.leader()
        lagging = next(g for g in c.groups.values() if g is not leader)
        lagging.transport.faults.set_partitioned(True, None)
        for i in range(60):
            await leader.propose(Put(f"k{i}", i))
        assert leader.snapshots.snapshot_index >= 20 and leader.core.log.first_index() > lagging.kv.applied_index + 1
        lagging.transport.faults.set_partitioned(False, None)
        for _ in range(400):
            if lagging.kv.applied_index >= leader.kv.applied_index:
                break
            await asyncio.sleep(0.01)
        assert lagging.kv.get("k59").value == 59 and lagging.snapshots.snapshot_index >= 20
        assert lagging.metrics.snapshots.labels("installed")._value.get() >= 1
    finally:
        await c.stop()


async def test_the_voters_take_their_snapshots_a_window_apart(tmp_path: Path) -> None:
    """A snapshot's file is as big as the store, and the disk thread that writes it holds the
    node's appends and fsyncs behind it (0.1-0.7 s for 110 MB on this project's test machine): at
    one index on every voter, no majority could make a write durable meanwhile. Each voter's
    windows of `every` entries are shifted by its rank, `every / n` apart: with `every` 90 the
    first snapshots are due at 30 entries (the third voter), 60 (the second) and 90 (the first).
    Each burst of writes is followed by a pause, since a snapshot also waits for its index to be
    on the node's disk, which a leader's may not be while its followers keep committing."""
    c = InProcessCluster(tmp_path, snapshot_every=90)
    await c.start()
    try:
        leader = await c.leader()
        by_rank = [c.groups[node] for node in sorted(c.groups)]
        written = 0
        for upto, have_snapshotted in ((45, [False, False, True]), (75, [False, True, True]),
                                       (105, [True, True, True])):
            while leader.kv.applied_index < upto:
                await leader.propose(Put(f"k{written}", written))
                written += 1
            await asyncio.sleep(0.3)
            assert [g.snapshots.snapshot_index > 0 for g in by_rank] == have_snapshotted, (
                upto, [g.snapshots.snapshot_index for g in by_rank])
    finally:
        await c.stop()


async def test_an_installed_snapshot_counts_as_persisted_up_to_its_index() -> None:
    """A follower that installs a snapshot holds the log up to its index on disk: the pump says so
    (GET /raft/log's "on disk" and /raft-state's stableIndex showed the last entry written before)."""
    reported: list[tuple[int, int]] = []
    pump = DiskPump("n2", MemoryStorage(), lambda messages: None, lambda i, t: reported.append((i, t)),
                    lambda: False, NodeMetrics("n2"))
    snapshot = Snapshot(SnapshotMeta(1210, 4, ConfState(("n1", "n2", "n3"))), b"")
    pump.hand(Ready(hard_state=HardState(4, None, 1210), snapshot=snapshot))
    await pump.flush()
    await pump.close()
    assert reported == [(1210, 4)]


async def test_health_says_unavailable_with_the_reason_while_no_leader_is_known(tmp_path: Path) -> None:
    group = InProcessCluster(tmp_path).groups["n1"]
    health = StatusReporter(group, group.metrics, lambda: {"n2": "", "n3": ""}).health()
    assert health["hasLeader"] is False and health["status"] == "unavailable"
    assert health["reason"] == "no leader is known"


async def test_a_group_whose_disk_fails_says_so_instead_of_looking_alive(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    """A disk pump that dies would leave a node sending heartbeats while persisting nothing: the
    group reports its death (a node process then exits) and logs why."""
    leader = await cluster.leader()

    def broken_sync() -> None:
        raise OSError(5, "Input/output error")

    leader.pump.storage.sync = broken_sync  # type: ignore[method-assign]
    write = asyncio.ensure_future(leader.propose(Put("doomed", 1)))  # the followers may still commit it
    assert leader.failed is not None
    exc = await asyncio.wait_for(asyncio.shield(leader.failed), 5)
    assert isinstance(exc, OSError) and "cannot go on" in caplog.text
    await leader.stop()  # a failed group halts: it writes nothing more
    await asyncio.gather(write, return_exceptions=True)


# ---- membership rules, on real groups in one process ------------------------------------------------


class MembershipCluster(InProcessCluster):
    """The in-process cluster with a MemberService per group, and room to add joining nodes."""

    def __init__(self, tmp_path: Path, ids: tuple[str, ...] = IDS) -> None:
        super().__init__(tmp_path, ids)
        self.tmp_path = tmp_path
        self.services = {node: self._service(group) for node, group in self.groups.items()}

    def _service(self, group: RaftGroup) -> MemberService:
        return MemberService(group.cfg, group, group.transport, group.metrics, on_removed=lambda why: None)

    async def join(self, name: str, leader: RaftGroup) -> RaftGroup:
        """Add `name` as a learner on the leader, then start its group with an empty log."""
        answer = await self.services[leader.id].add(name, f"http://{name}:1", f"{name}:2")
        member_id = answer["member"]["id"]
        cfg = NodeConfig(node_id=member_id, data_dir=self.tmp_path / member_id, tick_ms=5, join_url="memory",
                         members={**members(tuple(self.groups)), member_id: Member(member_id, name, 1, 2)})
        metrics = NodeMetrics(member_id)
        observer = GroupObserver(member_id, metrics, EventHub(member_id))
        transport = self.network.transport(member_id, list(self.groups), LinkFaults(), serialize=True)
        for group in self.groups.values():
            group.transport.add_peer(member_id)
        group = self.groups[member_id] = RaftGroup(cfg, MemoryStorage(), transport, KVStateMachine(), metrics,
                                                   observer, random.Random(member_id))
        self.services[member_id] = self._service(group)
        await transport.start(group.deliver)
        await group.start()
        return group


@pytest.fixture
async def membership(tmp_path: Path) -> AsyncIterator[MembershipCluster]:
    c = MembershipCluster(tmp_path)
    await c.start()
    yield c
    await c.stop()


async def test_a_joining_node_rebuilds_the_configuration_from_the_log_and_is_promoted(
        membership: MembershipCluster) -> None:
    leader = await membership.leader()
    await leader.propose(Put("before", 1))
    learner = await membership.join("n4", leader)
    service = membership.services[leader.id]
    for _ in range(400):  # caught up, and the leader has heard so (a learner that acknowledged nothing stays one)
        progress = leader.core.progress.get(learner.id)
        if learner.kv.get("before") is not None and progress is not None and progress.match > 0:
            break
        await asyncio.sleep(0.01)
    assert learner.core.conf == leader.core.conf and learner.id in leader.core.conf.learners
    assert learner.kv.members == leader.kv.members  # names and addresses, from the log itself
    await service.promote(learner.id)
    assert learner.id in leader.core.conf.voters
    assert [m["role"] for m in service.describe() if m["id"] == learner.id] == ["voter"]


async def test_membership_refusals_name_their_reason_and_change_nothing(membership: MembershipCluster) -> None:
    leader = await membership.leader()
    service = membership.services[leader.id]
    before = leader.core.conf
    refusals = [
        (service.add("n1", "http://x:1", "x:2"), "duplicate"),  # a member's name
        (service.add("n9", membership.services["n2"].address_book()["n2"].url, "y:2"), "duplicate"),
        (service.add("bad name", "http://x:1", "x:2"), "invalid"),
        (service.add("n9", "ftp://x:1", "x:2"), "invalid"),
        (service.promote("nobody"), "unknown"),
        (service.promote("n2"), "not_learner"),
        (service.remove("nobody"), "unknown"),
    ]
    for call, reason in refusals:
        with pytest.raises(MembershipRefused) as refused:
            await call
        assert refused.value.reason == reason, (reason, refused.value)
    assert leader.core.conf == before


async def test_a_learner_that_is_behind_is_not_promoted(membership: MembershipCluster) -> None:
    leader = await membership.leader()
    learner = await membership.join("n4", leader)
    learner.transport.faults.set_partitioned(True, None)
    for i in range(PROMOTE_MAX_LAG_ENTRIES + 20):
        await leader.propose(Put(f"k{i}", i))
    with pytest.raises(MembershipRefused) as refused:
        await membership.services[leader.id].promote(learner.id)
    assert refused.value.reason == "not_caught_up" and refused.value.details["lagEntries"] > PROMOTE_MAX_LAG_ENTRIES
    assert learner.id in leader.core.conf.learners


async def test_a_second_change_waits_for_the_first_to_commit(membership: MembershipCluster) -> None:
    leader = await membership.leader()
    service = membership.services[leader.id]
    for group in membership.groups.values():  # no quorum: the first change cannot commit
        if group is not leader:
            group.transport.faults.set_partitioned(True, None)
    first = asyncio.ensure_future(service.add("n4", "http://n4:1", "n4:2"))
    await asyncio.sleep(0.05)
    with pytest.raises(MembershipRefused) as refused:
        await service.add("n5", "http://n5:1", "n5:2")
    assert refused.value.reason == "pending" and refused.value.details["pendingIndex"] > 0
    first.cancel()


async def test_the_last_voter_cannot_be_removed(tmp_path: Path) -> None:
    solo = MembershipCluster(tmp_path, ids=("n1",))
    await solo.start()
    try:
        leader = await solo.leader()
        with pytest.raises(MembershipRefused) as refused:
            await solo.services["n1"].remove("n1")
        assert refused.value.reason == "last_voter" and leader.core.conf.voters == ("n1",)
    finally:
        await solo.stop()


# ---- the lab: hold-and-step delivery and true logs -------------------------------------------------


async def test_an_election_stepped_through_message_by_message(cluster: InProcessCluster) -> None:
    """With every node's messages held and clocks stopped, nothing happens until a person releases
    a message: a forced election is a transfer request, the leader's TimeoutNow, the candidate's
    vote requests and a vote back, seen one at a time, in that order."""
    old = await cluster.leader()
    for group in cluster.groups.values():
        group.transport.hold.set_active(True)
        group.clock_held = True
    candidate = next(g for g in cluster.groups.values() if g is not old)
    voter = next(g for g in cluster.groups.values() if g not in (old, candidate))
    election = asyncio.ensure_future(candidate.force_election())

    async def step(group: RaftGroup, kind: str, to: RaftGroup) -> None:
        """Wait until `group` holds a `kind` for `to`, check nothing else moved, release it."""
        for _ in range(300):
            found = [h["number"] for h in group.transport.hold.held() if h["type"] == kind and h["dst"] == to.id]
            if found:
                group.transport.hold.release(found[:1])
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{group.id} holds no {kind} for {to.id}: {group.transport.hold.held()}")

    await step(candidate, "TransferRequest", old)
    await step(old, "TimeoutNow", candidate)
    await step(candidate, "VoteRequest", voter)
    assert candidate.core.role is Role.CANDIDATE and old.core.role is Role.LEADER  # nothing moved on its own
    await step(voter, "VoteResponse", candidate)
    for _ in range(200):
        if candidate.core.role is Role.LEADER:
            break
        await asyncio.sleep(0.005)
    assert candidate.core.role is Role.LEADER and candidate.core.term > old.core.term
    for group in cluster.groups.values():  # leaving the mode lets everything flow again
        group.clock_held = False
        group.transport.hold.set_active(False)
    assert (await cluster.leader()) is candidate and (await election)["term"] == candidate.core.term


async def test_the_log_view_shows_real_terms_equal_on_every_node(cluster: InProcessCluster) -> None:
    leader = await cluster.leader()
    for i in range(5):
        await leader.propose(Put(f"k{i}", "v" * i))
    await leader.read_barrier()
    views = {g.id: log_view(g.core, 1, 100) for g in cluster.groups.values()}
    for group in cluster.groups.values():
        await group.read_barrier()
    leader_view = views[leader.id]
    assert [e["kind"] for e in leader_view["entries"][:3]] == ["conf_change"] * 3  # the founding members
    assert leader_view["entries"][0]["summary"] == "add voter n1"
    assert any(e["summary"] == 'put "k4" (6 B)' for e in leader_view["entries"])
    committed = {g: {e["index"]: e["term"] for e in v["entries"] if e["committed"]} for g, v in views.items()}
    for index, term in committed[leader.id].items():
        assert all(c.get(index, term) == term for c in committed.values()), index


async def test_automatic_compaction_forgets_a_bulk_load_a_bounded_step_at_a_time(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every replica compacts in one turn of its loop, a step per change forgotten: the first
    compaction after a bulk load of a million keys held all three loops for a second at once. The
    compactor proposes steps of at most `STEP_CHANGES` changes (a revision whose changes are more
    still goes whole) until the retention's target is reached, each reported as a step behind."""
    monkeypatch.setattr(compactor, "STEP_CHANGES", 10)
    leader = await cluster.leader()
    for i, width in enumerate((8, 12, 3, 3, 3)):  # a bulk load: one revision per transaction
        await leader.propose(Txn((), tuple(TxnPut(f"k{i}-{j}", j) for j in range(width)), ()))
    for i in range(20):
        await leader.propose(Put("hot", i))
    store = leader.kv.store
    auto = Compactor(leader, retention_revisions=5, retention_s=None)
    forgotten, behind = [], []
    while True:
        retained, compacted = len(list(store.changes_since(store.compacted))), store.compacted
        await auto.check(time.monotonic())
        if store.compacted == compacted:
            break
        forgotten.append(retained - len(list(store.changes_since(store.compacted))))
        behind.append(auto.behind)
    assert store.compacted == leader.kv.revision - 5
    assert forgotten == [8, 12, 10, 10, 4] and behind == [True] * 4 + [False], (forgotten, behind)


async def test_a_compaction_a_client_asks_for_goes_in_bounded_steps_and_a_future_one_forgets_nothing(
        cluster: InProcessCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """`POST /compact` and etcd's `Compact` used to be one entry however much they covered: after a
    bulk load, a second of every replica's loop at once. They now take the compactor's steps, one
    entry after the other, answered when the last has applied (here asked on a follower, whose
    steps are forwarded); a revision in the future is refused before any step forgets anything."""
    monkeypatch.setattr(compactor, "STEP_CHANGES", 10)
    leader = await cluster.leader()
    follower = next(g for g in cluster.groups.values() if g is not leader)
    for i, width in enumerate((8, 12, 3, 3, 3)):
        await leader.propose(Txn((), tuple(TxnPut(f"k{i}-{j}", j) for j in range(width)), ()))
    for i in range(20):
        await leader.propose(Put("hot", i))
    await follower.read_barrier()
    stores = [g.kv.store for g in cluster.groups.values()]
    forgotten: list[int] = []
    real_compact = MVCCStore.compact

    def counting_compact(store: MVCCStore, revision: int) -> int:
        retained = len(list(store.changes_since(store.compacted)))
        dropped = real_compact(store, revision)
        if store is leader.kv.store:
            forgotten.append(retained - len(list(store.changes_since(store.compacted))))
        return dropped

    monkeypatch.setattr(MVCCStore, "compact", counting_compact)
    refused = await compactor.compact_in_steps(follower, leader.kv.revision + 1)
    assert refused["error"] == state_machine.INVALID and forgotten == []
    assert {s.compacted for s in stores} == {0}
    hot_versions = len(leader.kv.store.history("hot"))
    target = leader.kv.revision - 5
    result = await compactor.compact_in_steps(follower, target)
    assert forgotten == [8, 12, 10, 10, 4], forgotten
    assert result["ok"] and result["compacted"] == target
    for group in cluster.groups.values():
        await group.read_barrier()
    assert {s.compacted for s in stores} == {target}
    assert result["dropped"] == hot_versions - len(leader.kv.store.history("hot")) > 0  # every step's


async def test_a_stalled_loop_shows_in_the_tick_lateness_and_warns_once(
        cluster: InProcessCluster, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever keeps a node's event loop busy (a long turn, a collection, a big store's snapshot
    being cut) delays its ticks, heartbeats and answers alike: how late each tick fired is a
    histogram, and a stall of half an election timeout or more is a warning, once per
    `STALL_WARNING_EVERY_S` however many follow."""
    leader = await cluster.leader()

    def stalled_ticks() -> float:
        text = leader.metrics.render()[0].decode()
        family = next(f for f in text_string_to_metric_families(text) if f.name == "raft_tick_lateness_seconds")
        buckets = {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
        return buckets["+Inf"] - buckets["0.1"]

    before = stalled_ticks()  # a start-up on a busy machine may have its own
    leader.stall_warned_at = -STALL_WARNING_EVERY_S  # and have warned of it
    with caplog.at_level(logging.WARNING, logger="raftkv.node"):
        for _ in range(2):
            time.sleep(0.25)  # the whole loop stands still: every group's, as in one node's process
            await asyncio.sleep(0.1)
    assert stalled_ticks() - before >= 2
    warned = [r.getMessage() for r in caplog.records if "event loop stalled" in r.getMessage()]
    assert len([w for w in warned if f"node={leader.id}" in w]) == 1, warned


async def test_a_packed_snapshots_parts_are_joined_in_the_executor_not_on_the_loop() -> None:
    """`bytes.join` lets go of the interpreter's lock, and on the loop, joining a snapshot of 1 KiB
    values (about 110 MB) held it for 340-570 ms on every node at once, long enough for an
    election. The parts are joined in the group's executor (a thread in a node)."""
    submitted = []

    class Recording(ThreadPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            submitted.append(fn)
            return super().submit(fn, *args, **kwargs)

    kv = KVStateMachine()
    for i in range(50):
        kv.apply(i + 1, encode(Put(f"k{i}", "v" * 1024)))
    with Recording(1) as executor:
        packed = await pack_between_turns(kv.snapshot_later(), executor)
    assert packed == kv.snapshot() and submitted == [b"".join]
