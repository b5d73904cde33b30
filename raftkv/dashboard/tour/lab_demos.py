"""Demos that need the lab: a split vote, log divergence and repair, a snapshot sent to a lagging node.

Split vote: with every message held and every clock stopped, the leader crashes and both followers
are made to time out; the tour delivers their pre-votes (each grants the other's, so both become
candidates in the same term, each voting for itself), then their vote requests (each refuses the
other): nobody can win. Letting the clocks run, randomized timeouts settle it in a new term.

Divergence: the leader is cut off with its clock held, so it never notices it lost its majority
(check-quorum counts ticks) and appends writes it can never commit; the majority elects a new
leader whose committed entries of a higher term sit at the same indexes. After the heal the old
leader's conflicting suffix is truncated and replaced, as the log table shows.

Snapshot: every node's snapshot interval is lowered (the lab), a follower is cut off from its
peers and crashed, and writes flow until the leader's log no longer holds the entries after the
follower's last one (a node keeps some entries after each snapshot: the writes go on until those
are gone too). The cut comes first so that the leader's appends for the follower are dropped, not
queued on the link to arrive after the restart. Restarted and healed, the follower can only be sent
the snapshot, and installs it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

from .runner import Tour, TourFailed

SNAPSHOT_EVERY = 100  # entries between snapshots during the snapshot demo
WRITE_BATCH = 200  # the snapshot demo writes this many at a time, then looks at the leader's log
MAX_SNAPSHOT_WRITES = 10_000
WRITE_CONCURRENCY = 32
DIVERGING_WRITES = 3


# ---------------------------------------------------------------------- split vote -------------


async def split_vote(t: Tour) -> None:
    t.need_supervisor("holds messages and crashes the leader")
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    a, b = t.followers(leader)[:2]
    await t.show(f"{before}A split vote: two candidates in one term, each with its own vote, and nobody wins. "
                 f"{leader} leads term {term}. Next: we hold every message and every clock (the lab: nothing "
                 f"times out, nothing is delivered until we say so), then crash {leader}.")
    t.doing("holding messages and clocks, then crashing the leader…")
    await t.lab.enter()
    await t.controls.process(leader, "crash")
    await t.show(f"{leader} is down. {a} and {b} would time out at different random moments; here both time out, "
                 f"one after the other, while no message moves. Next: {a} times out, then {b}.")
    for node in (a, b):
        t.doing(f"letting {node}'s clock run until it times out…")
        await t.lab.time_out(node)
    await t.show(f"Both are pre-candidates, still in term {term}: each asks for a pre-vote for term {term + 1}, the "
                 "term it would use (its own term does not move until a majority says it could win: the queue "
                 "shows these requests, dashed). Next: deliver both pre-vote requests and both answers.")
    await _exchange(t, a, b, pre_vote=True)
    await t.wait(f"{a} and {b} to be candidates of term {term + 1}",
                 lambda: all(t.role(n) == ("candidate", term + 1) for n in (a, b)))
    await t.show(f"Each granted the other's pre-vote, so both became candidates of term {term + 1}, each voting for "
                 "itself. Next: deliver their vote requests to each other, and the answers.")
    await _exchange(t, a, b, pre_vote=False)
    await t.wait("both refusals to be counted", lambda: all(
        t.status(n).get("votes", {}).get(t.hub.links[m].raft_id) is False for n, m in ((a, b), (b, a))))
    await t.show(f"Split vote: {a} and {b} refused each other (one vote per term, and each already voted for "
                 f"itself). Each holds 1 vote of 3 and {leader}, the third voter, is down: nobody can win term "
                 f"{term + 1}. Next: let the clocks run and the messages flow.")
    t.doing("leaving the lab: the held messages go, the clocks run…")
    await t.lab.leave()
    new_leader, new_term = await t.agreed_leader({a, b}, above_term=term + 1)
    await t.show(f"A new term: {new_leader}'s randomized election timer ran out first and it won term {new_term} "
                 f"before the other tried again. Randomized timeouts make a repeated split unlikely. Next: {leader} "
                 "comes back.")
    t.doing(f"restarting {leader}…")
    await t.controls.process(leader, "restart")
    await t.wait(f"{leader} to follow", lambda: t.role(leader)[0] == "follower" and t.leader())
    await t.show(f"{leader} restarted from its disk and follows {new_leader} in term {new_term}.")


async def _exchange(t: Tour, a: str, b: str, pre_vote: bool) -> None:
    """Deliver a's and b's (pre-)vote requests to each other, then the answers."""
    what = "pre-vote" if pre_vote else "vote"
    for kind in ("VoteRequest", "VoteResponse"):
        for src, dst in ((a, b), (b, a)):
            def match(h: dict, src: str = src, dst: str = dst, kind: str = kind) -> bool:
                return (h["srcName"], h["dstName"], h["type"], h["preVote"]) == (src, dst, kind, pre_vote)

            held = await t.wait(f"{src}'s {what} {'request' if kind == 'VoteRequest' else 'answer'} for {dst} in the "
                                "queue", lambda match=match: t.lab.oldest(match))
            t.doing(f"delivering {src}'s {held['label']} to {dst}…")
            await t.lab.deliver([held["id"]])


# ---------------------------------------------------------------------- divergence -------------


async def divergence(t: Tour) -> None:
    t.need_supervisor("holds one node's clock (the lab)")
    before = await t.prepare()
    leader, term = await t.agreed_leader()
    others = set(t.followers(leader))
    await t.show(f"{before}Log divergence and repair. {leader} leads term {term}. Next: we cut it off from its peers "
                 "and hold its clock, so it goes on believing it leads (check-quorum counts ticks) and accepts "
                 f"writes it can never commit; we send it {DIVERGING_WRITES}.")
    t.doing(f"cutting {leader} off and holding its clock…")
    await t.controls.isolate(leader)
    await t.lab.hold_clock_of(leader, True)
    first = int(t.status(leader).get("logLength", 0)) + 1
    writes = [asyncio.get_running_loop().create_task(_put(t, leader, f"diverge-{k}", k))
              for k in range(DIVERGING_WRITES)]
    last = first + DIVERGING_WRITES - 1
    await t.wait(f"{leader} to append them", lambda: int(t.status(leader).get("logLength", 0)) >= last)
    await t.show(f"{leader} appended them at indexes {first}-{last} in term {term}, but cannot reach a majority: they "
                 "stay uncommitted (striped in its row) and their clients wait. The others stopped hearing "
                 "heartbeats. Next: they elect a new leader, and we write through it.")
    new_leader, new_term = await t.agreed_leader(others, above_term=term)
    for k in range(2):
        t.doing(f"writing through {new_leader}…")
        await _put(t, new_leader, f"majority-{k}", k)
    await t.show(f"{new_leader} leads term {new_term}. At indexes from {first} on its log holds other entries, of "
                 f"term {new_term} and committed, than {leader}'s. Two logs may differ like this only in entries that "
                 f"are not committed. Next: heal the network and let {leader}'s clock run.")
    t.doing("healing the network…")
    await t.controls.heal()
    await t.lab.hold_clock_of(leader, False)
    await t.wait(f"{leader}'s entry at index {first} to be replaced", lambda: _term_at(t, leader, first) == new_term)
    answers = await _answers(writes)
    await t.show(f"{leader} heard term {new_term} and stepped down. {new_leader}'s append did not match its log, so "
                 f"{leader} dropped its conflicting entries from index {first} (struck out in its row) and took the "
                 f"leader's. The writes it had accepted were answered {answers}: never applied, so a client may "
                 "retry them.")


def _term_at(t: Tour, node: str, index: int) -> int | None:
    return next((e["term"] for e in t.hub.logs.last(node).get("entries", ()) if e["index"] == index), None)


async def _put(t: Tour, node: str, key: str, value: Any) -> int | str:
    """A write through `node`, answered whenever the node answers (its HTTP status, or why not)."""
    link = t.controls.link(node)
    try:
        async with t.hub.act("PUT", f"{link.url}/kv/{key}", json={"value": value},
                             timeout=aiohttp.ClientTimeout(total=30)) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, OSError, TimeoutError):
        return "no answer"


async def _answers(writes: list[asyncio.Task]) -> str:
    done, pending = await asyncio.wait(writes, timeout=10)
    for task in pending:
        task.cancel()
    codes = sorted({str(task.result()) for task in done} | ({"no answer yet"} if pending else set()))
    return " and ".join(codes)


# ---------------------------------------------------------------------- snapshot ---------------


async def snapshot(t: Tour) -> None:
    t.need_supervisor("lowers the snapshot interval (the lab) and restarts a node")
    before = await t.prepare()
    leader, _ = await t.agreed_leader()
    lagging = t.followers(leader)[0]
    await t.show(f"{before}Snapshots. A node keeps its log short by saving its state machine (a snapshot) and "
                 "dropping the entries before it. A follower too far behind cannot be sent the entries it lacks: "
                 f"the leader sends its snapshot instead. Next: every node snapshots each {SNAPSHOT_EVERY} entries "
                 f"(a lab setting), and {lagging} is cut off from its peers and crashes.")
    t.doing(f"lowering the snapshot interval, cutting {lagging} off and crashing it…")
    await t.lab.set_snapshot_every(SNAPSHOT_EVERY)
    await t.controls.split([[lagging], [n for n in t.voters() if n != lagging]])
    await t.controls.process(lagging, "crash")
    behind = int(t.hub.logs.last(lagging).get("lastIndex") or t.status(lagging).get("logLength", 0))
    await t.show(f"{lagging} is down with its log ending at index {behind}. Next: writes through {leader} until its "
                 f"log no longer holds entry {behind + 1}, the next one {lagging} needs.")
    written = await _write_until_compacted(t, leader, behind + 1)
    snap = int(t.hub.logs.last(leader)["snapshotIndex"])
    await t.show(f"After {written} writes {leader} took a snapshot at index {snap} (its row says 'snapshot {snap}'; "
                 "the cells up to it are hatched, where the table reaches back that far) and its log now starts at "
                 f"{t.hub.logs.last(leader)['firstIndex']}: entry {behind + 1} is gone. Next: restart {lagging} and "
                 "heal the network.")
    t.doing(f"restarting {lagging}, healing the network…")
    await t.controls.process(lagging, "restart")
    await t.controls.heal()
    await t.wait(f"{lagging} to install a snapshot", lambda: int(t.status(lagging).get("snapshotIndex", 0)) >= snap
                 and t.states().get(lagging), 30.0)
    installed = int(t.status(lagging)["snapshotIndex"])
    await t.show(f"{leader} found it no longer had the entries {lagging} needed and sent its snapshot instead (install "
                 f"snapshot: the large square). {lagging} installed it at index {installed}, replacing its state "
                 "machine, and then received the rest as ordinary appends. Next: the snapshot interval goes back.")
    t.doing("restoring the snapshot interval…")
    await t.lab.restore_snapshot_every()
    await t.show(f"Every node's snapshot interval is back to what it was. {lagging}'s log starts after its snapshot "
                 f"(its row says 'snapshot {installed}' or later): what came before lives in the snapshot, not in the "
                 "log.")


async def _write_until_compacted(t: Tour, leader: str, needed: int) -> int:
    """Write through `leader` until its log starts after `needed`; returns how many writes it took."""
    url = t.controls.link(leader).url
    gate = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def put(n: int) -> None:
        async with gate:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with t.hub.act("PUT", f"{url}/kv/snapshot-demo-{n % 50}", json={"value": n},
                                     timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    await resp.read()

    written = 0
    while int(t.hub.logs.last(leader).get("firstIndex") or 0) <= needed:
        if written >= MAX_SNAPSHOT_WRITES:
            raise TourFailed(f"{written} writes and {leader}'s log still holds entry {needed}")
        t.doing(f"{written} writes so far; {leader}'s log starts at {t.hub.logs.last(leader).get('firstIndex')}…")
        await asyncio.gather(*(put(written + k) for k in range(WRITE_BATCH)))
        written += WRITE_BATCH
        await asyncio.sleep(0.3)  # the leader's snapshot is taken in the background, then its log read
    return written
