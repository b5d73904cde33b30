"""The deterministic simulator: thousands of seeded faulty runs, the membership changing under
them, stay safe, live and linearizable, a seed replays exactly, and deliberately broken cores are
caught."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest
from buggy_cores import BUGS

from raftkv.core import ConfChange, ConfChangeKind, Config
from raftkv.sim import Harness, Replica, SimConfig, SimResult, Simulation, run_many, summarise
from raftkv.sim.membership import Roster
from raftkv.sim.replica import encode_command

SAFE_SEEDS = 400  # x 2 cluster sizes = 800 runs; wider sweeps: raftkv sim --seeds N (the suite has a budget)
BUG_SEED_BUDGET = 300


@pytest.mark.timeout(600)  # about 40 s on an idle 2-core machine; generous for a loaded one
def test_eight_hundred_seeded_runs_with_faults_and_membership_changes_are_safe_live_and_linearizable() -> None:
    configs = [SimConfig(nodes=3), SimConfig(nodes=5)]
    results: list[SimResult] = []
    summary = summarise(run_many(range(SAFE_SEEDS), configs), results.append)
    print(summary.line())
    assert summary.runs == 2 * SAFE_SEEDS
    details = "\n".join(
        f"seed {r.seed} ({r.config.nodes} nodes): {r.violation}\n  replay: {r.replay_command()}"
        for r in summary.failures[:5]
    )
    assert not summary.failures, details
    # The runs really were faulty and busy, or the assertion above would mean little.
    assert summary.faults > 5 * summary.runs
    assert summary.unknown_operations > 0
    assert summary.operations > 200 * summary.runs
    # The membership changed in most runs, in every way the nemesis knows.
    assert summary.membership_changes > summary.runs
    for what in ("add learner n", "add voter n", "remove n", "stop n", "the moment its own removal commits"):
        assert sum(any(what in f for f in r.faults) for r in results) > SAFE_SEEDS // 20, what
    leaders_removing_themselves = [r for r in results if any(_removes_itself(f) for f in r.faults)]
    assert len(leaders_removing_themselves) > SAFE_SEEDS // 10
    names_back_under_new_ids = [r for r in results if any("add learner" in f and "#" in f for f in r.faults)]
    assert len(names_back_under_new_ids) > SAFE_SEEDS // 20


def _removes_itself(fault: str) -> bool:
    """'t=950ms n1 proposes to remove n1'"""
    words = fault.split()
    return words[-3:-1] == ["to", "remove"] and words[1] == words[-1]


def test_a_seed_replays_exactly() -> None:
    first = Simulation(42, SimConfig(nodes=5))
    second = Simulation(42, SimConfig(nodes=5))
    a, b = first.run(), second.run()
    assert a.faults == b.faults
    assert first.history == second.history
    assert a.trace == b.trace and a.end_ms == b.end_ms


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_the_simulator_finds_a_deliberate_bug(bug: str) -> None:
    configs = [SimConfig(nodes=3), SimConfig(nodes=5)]
    found = None
    for r in run_many(range(BUG_SEED_BUDGET), configs, core_factory=BUGS[bug]):
        if not r.ok:
            found = r
            break
    assert found is not None, f"{bug} survived {BUG_SEED_BUDGET} seeds x 2 sizes"
    print(f"{bug}: seed {found.seed} ({found.config.nodes} nodes): {found.violation.splitlines()[0]}")
    # The failure replays exactly, in a fresh simulation, and with the trace on (as its replay
    # command asks) tells the story that led to it.
    again = Simulation(found.seed, found.config, BUGS[bug]).run()
    assert again.violation == found.violation
    traced = Simulation(found.seed, dataclasses.replace(found.config, trace=True), BUGS[bug]).run()
    assert traced.violation == found.violation and traced.trace


def test_a_write_not_yet_persisted_is_lost_in_a_crash_and_a_persisted_one_is_kept() -> None:
    replica = Replica(Config("n1", voters=("n1",)), seed=1)
    core = replica.core
    for _ in range(30):
        core.tick()
    rd = core.ready()
    replica.persist(rd)
    replica.finish(rd)
    core.propose([encode_command("kept", "write", "k", 1)])
    rd = core.ready()
    replica.persist(rd)
    replica.finish(rd)
    core.propose([encode_command("lost", "write", "k", 2)])
    core.ready()  # handed out, but the crash comes before it reaches the disk
    replica.crash()
    replica.start()
    data = [e.data for e in replica.durable.entries]
    assert any(b"kept" in d for d in data)
    assert not any(b"lost" in d for d in data)


def test_the_command_line_replays_one_seed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raftkv.sim", "--seed", "7", "--nodes", "3"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "seed 7, 3 nodes: ok" in out.stdout


def test_the_command_line_replay_shows_the_membership_changing() -> None:
    """Seed 5 on three nodes: the leader removes itself, n1 comes back with an empty disk as n1#2,
    joins as a learner, is promoted, and all three members apply the liveness probe."""
    out = subprocess.run(
        [sys.executable, "-m", "raftkv.sim", "--seed", "5", "--nodes", "3", "--trace"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    for line in (
        r"n1 proposes to remove n1",
        r"committed at \d+: remove n1; voters n2, n3\n",
        r"stop n1 for good \(it left the cluster\)",
        r"n1#2 starts with an empty disk, a new incarnation of n1",
        r"committed at \d+: add voter n1#2; voters n2, n3, n1#2\n",
        r"applied on every member \(n2, n3, n1#2\)",
        r"seed 5, 3 nodes: ok",
    ):
        assert re.search(line, out.stdout), line


def test_the_command_line_rejects_a_bad_cluster_size() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "raftkv.sim", "--seeds", "1", "--nodes", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "cluster sizes must be positive" in out.stderr


def test_a_server_whose_removal_is_not_committed_may_still_be_elected() -> None:
    """Thesis 4.2.2, found by the seeded runs: n1 leads n1 and n2, appends its own removal and is
    cut off. Its latest configuration makes n2 the only voter, but n2 never received it: n2 needs
    n1's vote, which n1 refuses (its log is longer). Unless n1 may still campaign while its
    removal is uncommitted, neither is ever elected again. It is, wins with n2's vote alone,
    commits its removal and steps down, and n2 leads the configuration of one."""
    h = Harness(("n1", "n2"))
    h.elect("n1")
    h.isolate("n1")
    h.act("n1", lambda c: c.propose_conf_change(ConfChange(ConfChangeKind.REMOVE, "n1")))
    h.drop()
    assert h.core("n1").conf.voters == ("n2",) and h.core("n2").conf.voters == ("n1", "n2")
    h.tick("n1", 2 * h.core("n1").config.election_timeout_ticks)  # check-quorum: it steps down
    h.heal()
    for _ in range(5):
        h.expire_leases()
        h.tick_all(25)
        h.stabilize()
    assert h.leaders() == ["n2"]
    assert h.core("n2").conf.voters == ("n2",)
    _, index = h.propose("n2", "after")
    assert h.core("n2").log.committed >= index


def test_each_incarnation_of_a_name_has_its_own_id() -> None:
    roster = Roster(("n1", "n2", "n3"))
    assert roster.joinable_names() == ["n4"]  # nobody has left: only a brand-new name
    roster.on_applied(5, ConfChange(ConfChangeKind.REMOVE, "n2"))
    assert roster.left == {"n2"} and roster.committed.voters == ("n1", "n3")
    assert roster.joinable_names() == ["n2", "n4"]
    assert roster.joined(roster.next_id("n2")) == "n2"  # n2#2 replaces n2
    assert roster.current_id("n2") == "n2#2"
    assert roster.joinable_names() == ["n4"]  # n2#2 has not left
    assert roster.on_applied(5, ConfChange(ConfChangeKind.REMOVE, "n2")) is None  # applied again elsewhere
