"""The two promises a Raft store lives by, held against the real node driver: persist before send
(a vote or an append acknowledgement leaves only once what it vouches for is fsynced) and fsync at
all (an acknowledged write survives crashes).

- Seeded simulations of real RaftGroups on a virtual clock (raftkv/sim/driver_sim.py): crashes that
  lose what was not synced, partitions, lossy links, slow disks, forced elections, clients; checked
  for persist before send, Election Safety, State Machine Safety, acknowledged writes kept,
  liveness after healing and a linearizable history; and, with the real Lessor on every node, that
  no lease expires before its TTL since an acknowledged keep-alive, and that every lease nobody
  keeps alive expires once the faults stop.
- The order of writes, fsyncs and sends of groups on the real DiskStorage (a WAL in a tmp dir).
- Both bite: each broken driver in tests/buggy_drivers.py must fail them, as must the simulation's
  crash checks alone for a driver that never fsyncs; each broken lessor in tests/buggy_lessors.py
  must fail the lease check.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from buggy_drivers import BUGS
from buggy_lessors import BUGS as LESSOR_BUGS

from raftkv.core import AppendResponse, DurableState, Entry, HardState, Role, VoteResponse
from raftkv.kv import KVStateMachine, Put
from raftkv.node import NodeConfig, RaftGroup
from raftkv.node.config import Member
from raftkv.node.event_stream import EventHub
from raftkv.node.metrics import NodeMetrics
from raftkv.node.observe import GroupObserver
from raftkv.sim import driver_sim
from raftkv.sim.driver_sim import DriverSimConfig, DriverSimResult, run_driver_seed, run_driver_seeds
from raftkv.sim.persist_before_send import DiskLedger, PromiseCheckingTransport, RecordingStorage
from raftkv.sim.virtual_loop import LoopExecutor, VirtualClockLoop, VirtualClockStalled, run_virtual
from raftkv.storage import DiskStorage
from raftkv.transport import LinkFaults, MemoryNetwork

REPO = Path(__file__).resolve().parents[1]
SEEDS = range(100)
BUG_SEED_BUDGET = 100
IDS = ("n1", "n2", "n3")


# ---- the virtual clock ----------------------------------------------------------------------------


def test_an_hour_of_virtual_time_passes_at_once_and_a_slow_disk_finishes_on_the_virtual_clock() -> None:
    async def scenario() -> tuple[float, int, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        started = loop.time()
        written = await loop.run_in_executor(LoopExecutor(delay_s=0.025), lambda: 7)
        return started, written, loop.time() - started

    assert run_virtual(scenario()) == (3600.0, 7, pytest.approx(0.025))


def test_disk_work_abandoned_in_a_crash_never_happens() -> None:
    done: list[str] = []

    async def scenario() -> None:
        disk = LoopExecutor(delay_s=0.01)
        fsync = asyncio.get_running_loop().run_in_executor(disk, done.append, "fsync")
        disk.abandon()
        await asyncio.sleep(1)
        assert fsync.cancelled()

    run_virtual(scenario())
    assert done == []


def test_a_loop_that_never_lets_time_pass_is_stopped_as_a_livelock() -> None:
    loop = VirtualClockLoop(spin_limit=1000)

    def bounce() -> None:
        loop.call_soon(bounce)

    loop.call_soon(bounce)
    try:
        with pytest.raises(VirtualClockStalled, match=r"1000 loop turns at t=0\.000000"):
            loop.run_forever()
    finally:
        loop.close()


# ---- the ledger: what a vote or an acknowledgement vouches for ---------------------------------------


def test_an_acknowledgement_waits_for_the_fsync_of_the_entries_it_vouches_for() -> None:
    """Figure 2: a follower answers AppendEntries only after its log is on stable storage."""
    ledger = DiskLedger("n2")
    ledger.loaded(DurableState())
    ledger.wrote_hard_state(HardState(2, "n1", 0))
    ledger.synced_all()
    ledger.wrote_entries([Entry(2, 1), Entry(2, 2)])
    ack = AppendResponse(src="n2", dst="n1", term=2, success=True, match_index=2)
    log = {1: 2, 2: 2}
    assert "before its log up to index 2 was fsynced" in (ledger.broken_promise(ack, log.get) or "")
    ledger.synced_all()
    assert ledger.broken_promise(ack, log.get) is None
    assert ledger.checked == Counter({"AppendResponse": 2})


def test_an_entry_replaced_at_the_same_index_counts_only_once_the_replacement_is_synced() -> None:
    """A new leader's entry overwrites index 2: the disk holds an entry 2, but not the one vouched for."""
    ledger = DiskLedger("n2")
    ledger.loaded(DurableState(HardState(2, "n1", 0), None, [Entry(2, 1), Entry(2, 2)]))
    ledger.wrote_hard_state(HardState(3, None, 0))
    ledger.synced_all()
    ledger.wrote_entries([Entry(3, 2)])
    ack = AppendResponse(src="n2", dst="n3", term=3, success=True, match_index=2)
    assert ledger.broken_promise(ack, {1: 2, 2: 3}.get) is not None
    ledger.synced_all()
    assert ledger.broken_promise(ack, {1: 2, 2: 3}.get) is None
    stale = AppendResponse(src="n2", dst="n1", term=2, success=True, match_index=5)
    assert ledger.broken_promise(stale, {}.get) is None  # a term left behind on disk vouches for nothing


def test_a_vote_waits_for_the_fsync_of_the_vote() -> None:
    ledger = DiskLedger("n1")
    ledger.loaded(DurableState())
    ledger.wrote_hard_state(HardState(4, "n3", 0))
    vote = VoteResponse(src="n1", dst="n3", term=4, granted=True)
    assert "before its term 4 was fsynced" in (ledger.broken_promise(vote, {}.get) or "")
    ledger.synced_all()
    assert ledger.broken_promise(vote, {}.get) is None
    other = VoteResponse(src="n1", dst="n2", term=4, granted=True)
    assert "its vote for n2 in term 4" in (ledger.broken_promise(other, {}.get) or "")


# ---- the real driver in a seeded simulation -------------------------------------------------------


def failures_of(results: Iterable[DriverSimResult]) -> list[DriverSimResult]:
    return sorted((r for r in results if not r.ok), key=lambda r: r.seed)


def describe(failures: list[DriverSimResult]) -> str:
    return "\n\n".join(f"seed {r.seed}: {r.violation}\nreplay: {r.replay_command()}\n" + "\n".join(r.trace[-25:])
                       for r in failures[:3])


def assert_seeds_pass(seeds: Iterable[int], cfg: DriverSimConfig | None = None) -> list[DriverSimResult]:
    results = list(run_driver_seeds(seeds, cfg or DriverSimConfig()))
    failures = failures_of(results)
    assert not failures, describe(failures)
    return results


def test_a_snapshot_that_one_installed_meanwhile_covers_is_skipped_not_an_error() -> None:
    """Seed 5027 of five nodes: a follower was encoding a snapshot at its applied index, 290, when
    it accepted the leader's snapshot at that same index. The snapshotter learnt of the install
    only when its Ready came through, tried to take its own at 290 anyway, and logged "snapshot
    index 290 must be in (290, 290]". The core knows from the step that accepted it."""
    result = run_driver_seed(5027, DriverSimConfig(nodes=5, fault_s=3.0))
    assert result.ok and result.errors == [], result.errors


@pytest.mark.timeout(600)  # about 10 s on an idle 2-core machine
def test_the_real_driver_stays_safe_live_and_linearizable_through_seeded_crashes_and_partitions() -> None:
    results = assert_seeds_pass(SEEDS)
    runs = len(results)
    print(f"{runs} runs: {sum(r.operations for r in results)} operations "
          f"({sum(r.unknown_operations for r in results)} unknown), {sum(len(r.faults) for r in results)} faults, "
          f"{sum(r.promises_checked for r in results)} promises checked, "
          f"{sum(bool(r.errors) for r in results)} runs logged an error and carried on")
    # The runs really were faulty and busy, or passing would mean little.
    assert sum(len(r.faults) for r in results) > 5 * runs
    assert sum(any(" crash " in f for f in r.faults) for r in results) > runs // 2
    assert sum(r.operations for r in results) > 100 * runs
    assert sum(r.unknown_operations for r in results) > 0
    assert all(r.promises_checked > 20 for r in results)
    # Leases were granted, kept alive across the faults, and expired, in every run.
    assert all(r.leases_granted > 0 and r.leases_expired >= r.leases_granted for r in results)
    assert sum(r.keepalives_acknowledged for r in results) > 5 * runs


def test_a_seed_replays_exactly() -> None:
    first, again = run_driver_seed(11), run_driver_seed(11)
    assert first.ok and first.operations > 50
    assert (first.history_digest, first.faults, first.trace, first.end_s) == (
        again.history_digest, again.faults, again.trace, again.end_s)


def test_a_seed_replays_exactly_whatever_the_hash_seed_of_the_process() -> None:
    """The replay command a failure prints must work from a fresh process."""

    def replay(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        cmd = [sys.executable, "-m", "raftkv.sim", "--driver", "--seed", "4", "--nodes", "3", "--fault-ms", "1000"]
        return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=120).stdout

    first = replay("1")
    assert "seed 4, 3 nodes: ok" in first
    assert replay("2") == first


# ---- persist before send on the real WAL ----------------------------------------------------------


async def groups_on_disk(tmp_path: Path) -> tuple[list[str], Counter[str], list[str]]:
    """Three groups on DiskStorage (real WAL, fsync on a thread for the leader) and memory links:
    an election, writes through every node, a leadership transfer, a follower cut off and caught
    up. Returns the broken promises, the promises checked by message type, and the order of the
    cut-off follower's last writes, fsyncs and sends."""
    broken: list[str] = []
    network = MemoryNetwork()
    groups: list[RaftGroup] = []
    ledgers: dict[str, DiskLedger] = {}
    members = {n: Member(n, "127.0.0.1", 1, 2) for n in IDS}
    for node in IDS:
        ledger = DiskLedger(node)
        storage = RecordingStorage(DiskStorage(tmp_path / node), ledger)
        transport = PromiseCheckingTransport(network.transport(node, [p for p in IDS if p != node], LinkFaults()),
                                             ledger, broken.append)
        metrics = NodeMetrics(node)
        group = RaftGroup(NodeConfig(node_id=node, data_dir=tmp_path / node, members=members, tick_ms=5), storage,
                          transport, KVStateMachine(), metrics, GroupObserver(node, metrics, EventHub(node)),
                          random.Random(node))
        transport.bind(group.core)
        await transport.start(group.deliver)
        await group.start()
        groups.append(group)
        ledgers[node] = ledger

    async def leader() -> RaftGroup:
        while True:
            leaders = [g for g in groups if g.core.role is Role.LEADER]
            if len(leaders) == 1 and all(g.leader_id == leaders[0].id for g in groups):
                return leaders[0]
            await asyncio.sleep(0.005)

    async def settle(check: Callable[[], bool]) -> None:
        while not check():
            await asyncio.sleep(0.005)

    try:
        first = await asyncio.wait_for(leader(), 5)
        for i, group in enumerate(groups * 3):
            await group.propose(Put(f"k{i}", i))
        follower = next(g for g in groups if g is not first)
        await follower.force_election()
        second = await asyncio.wait_for(leader(), 5)
        lagging = next(g for g in groups if g is not second)
        lagging.transport.inner.faults.set_partitioned(True, None)  # type: ignore[attr-defined]
        for i in range(20):
            await second.propose(Put("while-cut-off", i))
        lagging.transport.inner.faults.set_partitioned(False, None)  # type: ignore[attr-defined]
        await asyncio.wait_for(settle(lambda: lagging.kv.applied_index == second.kv.applied_index), 5)
    finally:
        for group in groups:
            await group.stop()
            await group.transport.close()
    checked = sum((ledger.checked for ledger in ledgers.values()), Counter())
    return broken, checked, list(ledgers[lagging.id].order)


async def test_votes_and_acknowledgements_leave_only_after_the_fsync_of_the_wal_behind_them(tmp_path: Path) -> None:
    broken, checked, order = await groups_on_disk(tmp_path)
    assert not broken, broken[0]
    # Every kind of promise was really made, and checked, many times over.
    assert checked["VoteRequest"] >= 2 and checked["VoteResponse"] >= 2, checked
    assert checked["AppendResponse"] >= 40, checked
    # As the cut-off follower caught up, no acknowledgement left while entries it had written waited
    # for their fsync (a hard state that only moves the commit index waits for the next one).
    assert any(line.startswith("write entries") for line in order), order
    assert any(line.startswith("send AppendResponse") for line in order), order
    unsynced_entries = False
    for line in order:
        if line.startswith("write entries"):
            unsynced_entries = True
        elif line == "fsync":
            unsynced_entries = False
        elif line.startswith("send AppendResponse"):
            assert not unsynced_entries, order


# ---- the broken drivers fail them -----------------------------------------------------------------


@pytest.mark.parametrize("bug", sorted(BUGS))
async def test_a_driver_that_breaks_a_promise_fails_on_the_real_wal(
        bug: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    BUGS[bug](monkeypatch)
    with pytest.raises(AssertionError, match=r"sent Vote(Request|Response)\(term 2.*before its term 2 was fsynced"):
        await test_votes_and_acknowledgements_leave_only_after_the_fsync_of_the_wal_behind_them(tmp_path)


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_a_driver_that_breaks_a_promise_fails_the_simulation(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    BUGS[bug](monkeypatch)
    with pytest.raises(AssertionError, match="before its term 2 was fsynced") as failed:
        assert_seeds_pass(SEEDS[:10], DriverSimConfig())
    assert "replay: python -m raftkv.sim --driver --seed 0 --nodes 3" in str(failed.value)


def test_the_crash_checks_alone_catch_a_driver_that_never_fsyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the promise check, the crashes must still expose it: a restarted node has lost its
    votes and acknowledged entries, and the cluster commits two different entries at one index."""
    BUGS["never-fsyncs"](monkeypatch)
    cfg = DriverSimConfig(check_promises=False)
    found = next((r for seed in range(BUG_SEED_BUDGET) if not (r := run_driver_seed(seed, cfg)).ok), None)
    assert found is not None, f"a driver that never fsyncs survived {BUG_SEED_BUDGET} seeds of crashes"
    print(f"never-fsyncs, crash checks alone: seed {found.seed}: {found.violation.splitlines()[0]}")
    assert run_driver_seed(found.seed, cfg).violation == found.violation


def test_a_group_that_dies_fails_the_simulation_with_its_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    class DiesAtTheTenthEntry(driver_sim.LeaseWatchingKV):
        def apply(self, index: int, data: bytes, *, answer: bool = True) -> dict | None:
            if index == 10:
                raise RuntimeError("a bug in apply")
            return super().apply(index, data, answer=answer)

    monkeypatch.setattr(driver_sim, "LeaseWatchingKV", DiesAtTheTenthEntry)
    result = run_driver_seed(0)
    assert not result.ok and "group failed: RuntimeError('a bug in apply')" in result.violation, result.violation


@pytest.mark.parametrize("bug", sorted(LESSOR_BUGS))
def test_a_lessor_that_expires_a_lease_early_fails_the_simulation(bug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A lessor that renews a lease whose revocation is under way, or that keeps its deadlines
    across a term in which another leader acknowledged keep-alives, is caught within the seeds the
    suite runs, by the lease check and nothing else."""
    monkeypatch.setattr(driver_sim, "Lessor", LESSOR_BUGS[bug])
    found = next((r for seed in SEEDS if not (r := run_driver_seed(seed)).ok), None)
    assert found is not None, f"a lessor that {bug} survived {len(SEEDS)} seeds"
    assert "expired at" in found.violation and "before" in found.violation, found.violation
    print(f"{bug}: seed {found.seed}: {found.violation.splitlines()[0]}")
