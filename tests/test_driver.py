"""The node driver's bookkeeping for writes, in-process (no sockets opened): where each waiting
write's answer comes from when leadership moves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from raftkv.core import ProposeAnswer
from raftkv.node.config import Member, NodeConfig
from raftkv.node.driver import RaftNode
from raftkv.node.errors import NoQuorumError, OutcomeUnknownError
from raftkv.node.metrics import FAST_BUCKETS, NodeMetrics
from raftkv.storage import MemoryStorage


def make_node(tmp_path: Path) -> RaftNode:
    members = {f"n{i}": Member(f"n{i}", "127.0.0.1", 1, 2) for i in (1, 2, 3)}
    return RaftNode(NodeConfig(node_id="n1", data_dir=tmp_path, members=members), storage=MemoryStorage())


def test_a_write_displaced_by_another_terms_entry_is_answered_503_not_left_hanging(tmp_path: Path) -> None:
    """An old leader's write waits at index 7 of term 2; after a leadership change a forwarded
    batch is placed at index 7 of term 3. The old write can never commit (the new leader holds no
    committed entry there), so it is answered "not applied" at once instead of never."""

    async def scenario() -> None:
        node = make_node(tmp_path)
        loop = asyncio.get_running_loop()
        old, new = loop.create_future(), loop.create_future()
        node._wait_for(7, (2, old, 0.0, 1e18, None))
        node._forwarded[5] = ("n2", [(new, 0.0)], 1e18)
        node._place_forwarded(ProposeAnswer(src="n2", dst="n1", term=3, ticket=5, index=7))
        with pytest.raises(NoQuorumError, match="not applied"):
            old.result()
        assert not new.done() and node._waiting_proposals[7][:2] == (3, new)

    asyncio.run(scenario())


def test_a_forwarded_batch_the_leader_refused_is_503(tmp_path: Path) -> None:
    async def scenario() -> None:
        node = make_node(tmp_path)
        futs = [asyncio.get_running_loop().create_future() for _ in range(3)]
        node._forwarded[9] = ("n2", [(f, 0.0) for f in futs], 1e18)
        node._last_forward = (9, "n2", 0.0)
        node._place_forwarded(ProposeAnswer(src="n2", dst="n1", term=3, ticket=9, index=0, error="not the leader"))
        for fut in futs:
            with pytest.raises(NoQuorumError, match="did not take the write: not the leader"):
                fut.result()
        assert node._last_forward is None and not node._forwarded

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


def test_writes_forwarded_to_a_leader_that_is_gone_are_504_at_once(tmp_path: Path) -> None:
    """The leader was killed before it answered: its followers must not hold their clients for
    the whole proposal timeout (clients would time out instead of retrying elsewhere)."""

    async def scenario() -> None:
        node = make_node(tmp_path)
        fut = asyncio.get_running_loop().create_future()
        node._forwarded[3] = ("n2", [(fut, 0.0)], 1e18)
        node._leader = "n2"
        node.core.campaign_now()  # this node stops following n2
        while node.core.has_ready():
            rd = node.core.ready()
            node.core.advance(rd)
            if rd.soft_state is not None:
                node._on_soft_state(rd)
        with pytest.raises(OutcomeUnknownError, match="stopped being the leader"):
            fut.result()
        assert not node._forwarded

    asyncio.run(scenario())


def test_health_says_unavailable_with_the_reason_while_no_leader_is_known(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    health = node.health()
    assert health["hasLeader"] is False and health["status"] == "unavailable"
    assert health["reason"] == "no leader is known"
