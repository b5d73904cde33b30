"""The watch hub (raftkv/node/watch.py) over a real state machine: order, replay, bounds, snapshots."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from raftkv.api.coordination import MAX_BATCHES_PER_WRITE, _sse_queued
from raftkv.kv import Compact, CompactedError, Delete, KVStateMachine, Put, Txn, TxnPut, encode
from raftkv.node.watch import MAX_PENDING_BATCHES, WatchBatch, WatchHub


class Store:
    def __init__(self) -> None:
        self.sm = KVStateMachine()
        self.hub = WatchHub(self.sm)

    def __call__(self, cmd: Any) -> dict[str, Any]:
        result = self.sm.apply(self.sm.applied_index + 1, encode(cmd))
        self.hub.flush()  # as the group does after each batch of entries
        return result


def drain(queue: asyncio.Queue[WatchBatch]) -> list[WatchBatch]:
    batches = []
    while not queue.empty():
        batches.append(queue.get_nowait())
    return batches


async def test_a_prefix_watcher_gets_one_batch_per_revision_in_order_and_only_its_keys() -> None:
    s = Store()
    watcher = s.hub.watch(prefix="svc/", prev_kv=True)
    s(Put("svc/a", 1))
    s(Put("other", 1))
    s(Txn((), (TxnPut("svc/a", 2), TxnPut("svc/b", 1), TxnPut("x", 0)), ()))
    s(Delete("svc/a"))
    batches = drain(watcher.queue)
    assert [b.revision for b in batches] == [1, 3, 4]
    assert [[c.key for c in b.changes] for b in batches] == [["svc/a"], ["svc/a", "svc/b"], ["svc/a"]]
    delete = batches[2].to_json(prev_kv=True)["events"][0]
    assert delete == {"type": "delete", "key": "svc/a", "prev": {"key": "svc/a", "value": 2, "create_revision": 1,
                                                                 "mod_revision": 3, "version": 2}}


async def test_watchers_wanting_the_same_changes_share_one_batch_encoded_once() -> None:
    s = Store()
    a, b, other = s.hub.watch(prefix="svc/"), s.hub.watch(prefix="svc/"), s.hub.watch(key="svc/b")
    s(Txn((), (TxnPut("svc/a", 1), TxnPut("svc/b", 1)), ()))
    [batch_a], [batch_b], [batch_other] = drain(a.queue), drain(b.queue), drain(other.queue)
    assert batch_a is batch_b  # one object for every watcher of the prefix
    assert batch_other is not batch_a and [c.key for c in batch_other.changes] == ["svc/b"]
    encoded, _ = _sse_queued(batch_a, asyncio.Queue(), prev_kv=False)
    assert _sse_queued(batch_b, asyncio.Queue(), prev_kv=False)[0] is encoded  # encoded for the first only
    assert _sse_queued(batch_b, asyncio.Queue(), prev_kv=True)[0] != encoded  # prev_kv is another encoding


async def test_a_watch_stream_writes_what_is_queued_at_once_in_order_up_to_its_cancellation() -> None:
    s = Store()
    watcher = s.hub.watch(prefix="")
    for i in range(3):
        s(Put(f"k{i}", i))
    watcher.cancel("too slow: test")
    data, ended = _sse_queued(watcher.queue.get_nowait(), watcher.queue, prev_kv=False)
    assert ended and watcher.queue.empty()
    messages = data.decode().split("\n\n")[:-1]
    assert [m.split("\n")[0] for m in messages] == ["id: 1", "id: 2", "id: 3", "event: cancelled"]
    for i in range(MAX_BATCHES_PER_WRITE + 5):  # one write is bounded; the rest waits for the next
        s(Put(f"k{i}", i))
    live = s.hub.watch(prefix="", start_revision=4)
    data, ended = _sse_queued(live.queue.get_nowait(), live.queue, prev_kv=False)
    assert not ended and data.count(b"\nid: ") + data.startswith(b"id: ") == MAX_BATCHES_PER_WRITE
    assert live.queue.qsize() == 5


async def test_a_watch_from_a_past_revision_replays_then_goes_live_without_a_gap_or_a_duplicate() -> None:
    s = Store()
    for i in range(5):
        s(Put("k", i))
    watcher = s.hub.watch(key="k", start_revision=3)
    s(Put("k", 5))
    assert [b.revision for b in drain(watcher.queue)] == [3, 4, 5, 6]
    resumed = s.hub.watch(key="k", start_revision=5)  # "after the last revision I saw, 4"
    assert [b.revision for b in drain(resumed.queue)] == [5, 6]


async def test_a_start_below_the_compacted_revision_is_refused() -> None:
    s = Store()
    for i in range(5):
        s(Put("k", i))
    s(Compact(4))
    with pytest.raises(CompactedError, match=r"^revision 2 is compacted: the compacted revision is 4 ") as refused:
        s.hub.watch(key="k", start_revision=2)  # named as asked for (the history it needs starts there)
    assert (refused.value.revision, refused.value.compacted) == (2, 4)
    assert [b.revision for b in drain(s.hub.watch(key="k", start_revision=5).queue)] == [5]


async def test_a_slow_watcher_is_cancelled_with_where_to_resume_and_holds_bounded_memory() -> None:
    s = Store()
    slow = s.hub.watch(prefix="")
    for i in range(MAX_PENDING_BATCHES + 50):
        s(Put(f"k{i}", i))
    batches = drain(slow.queue)
    assert len(batches) == MAX_PENDING_BATCHES + 1 and slow.cancelled
    assert batches[-1].cancelled and "too slow" in batches[-1].cancelled
    assert batches[-1].revision == MAX_PENDING_BATCHES + 1  # resume right after the last one it got


async def test_progress_tells_an_idle_watcher_how_current_it_is() -> None:
    s = Store()
    watcher = s.hub.watch(key="quiet")
    s(Put("noise", 1))
    s.hub.progress()
    [batch] = drain(watcher.queue)
    assert batch.progress and batch.revision == 1 and batch.to_json(False) == {"progress": True, "revision": 1}
    s.hub.progress()  # nothing changed since: told again (the notice says the watch is alive)
    assert [(b.progress, b.revision) for b in drain(watcher.queue)] == [(True, 1)]
    later = s.hub.watch(key="quiet", start_revision=5)  # from a revision still to come: nothing to tell
    s.hub.progress()
    assert drain(later.queue) == [] and later.delivered_to == 4


async def test_after_a_snapshot_a_watcher_gets_what_it_missed_or_is_told_history_is_gone() -> None:
    s = Store()
    keeping_up, behind = s.hub.watch(prefix="a"), s.hub.watch(prefix="a")
    s(Put("a1", 1))
    drain(keeping_up.queue)
    drain(behind.queue)
    leader = KVStateMachine()
    for i in range(1, 4):
        leader.apply(i, encode(Put(f"a{i}", i)))
    s.sm.restore(leader.snapshot())  # as a follower installs the leader's snapshot
    s.hub.restored()
    assert [b.revision for b in drain(keeping_up.queue)] == [2, 3]
    leader.apply(4, encode(Compact(3)))
    s.sm.restore(leader.snapshot())
    s.hub.restored()
    assert not drain(keeping_up.queue)  # it had everything up to 3
    late = s.hub.watch(prefix="a", start_revision=4)
    assert drain(late.queue) == [] and not late.cancelled
