"""The deterministic simulator: thousands of seeded faulty runs stay safe, live and linearizable,
a seed replays exactly, and deliberately broken cores are caught."""

from __future__ import annotations

import subprocess
import sys

import pytest
from buggy_cores import BUGS

from raftkv.core import Config
from raftkv.sim import Replica, SimConfig, Simulation, run_many, summarise
from raftkv.sim.replica import encode_command

SAFE_SEEDS = 1000  # x 2 cluster sizes = 2,000 runs
BUG_SEED_BUDGET = 300


@pytest.mark.timeout(1200)  # about 90 s on an idle 2-core machine; generous for a loaded one
def test_two_thousand_seeded_runs_with_faults_are_safe_live_and_linearizable() -> None:
    configs = [SimConfig(nodes=3), SimConfig(nodes=5)]
    summary = summarise(run_many(range(SAFE_SEEDS), configs))
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
    # The failure replays exactly, in a fresh simulation, with its trace.
    again = Simulation(found.seed, found.config, BUGS[bug]).run()
    assert again.violation == found.violation
    assert again.trace


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
