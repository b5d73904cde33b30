"""Command line: run seeded simulations with a progress bar, or replay one seed with its trace.

python -m raftkv.sim --seeds 10000            # seeds 0..9999, 3 and 5 nodes
python -m raftkv.sim --seed 1234 --nodes 5 --trace
python -m raftkv.sim --driver --seeds 500     # the real node driver (RaftGroups), see driver_sim.py
"""

from __future__ import annotations

import click
from tqdm import tqdm

from .driver_sim import DriverSimConfig, run_driver_seed, run_driver_seeds
from .runner import run_many, summarise
from .simulation import SimConfig, SimResult, run_seed


def print_failure(r: SimResult) -> None:
    click.echo(f"\nFAILED seed {r.seed} with {r.config.nodes} nodes: {r.violation}", err=True)
    click.echo(f"replay: {r.replay_command()}", err=True)


@click.command()
@click.option("--seeds", default=1000, show_default=True, help="How many seeds to run (from --start).")
@click.option("--start", default=0, show_default=True, help="First seed.")
@click.option("--seed", type=int, default=None, help="Run just this seed and print its trace.")
@click.option("--nodes", default="3,5", show_default=True, help="Cluster sizes, comma separated.")
@click.option("--fault-ms", default=SimConfig.fault_ms, show_default=True, help="Virtual ms of faults per run.")
@click.option("--workers", type=int, default=None, help="Worker processes (default: one per core).")
@click.option("--trace", is_flag=True, help="With --seed: record and print the cores' own events too.")
@click.option("--driver", is_flag=True, help="Simulate the real node driver (RaftGroups on a virtual clock) "
              "instead of bare cores.")
def main(seeds: int, start: int, seed: int | None, nodes: str, fault_ms: int, workers: int | None, trace: bool,
         driver: bool) -> None:
    """Deterministic simulation of raftkv's Raft core under faults, checked after every step."""
    sizes = [int(n) for n in nodes.split(",")]
    if any(n < 1 for n in sizes):
        raise click.BadParameter("cluster sizes must be positive", param_hint="--nodes")
    if driver:
        configs = [DriverSimConfig(nodes=n, fault_s=fault_ms / 1000, trace=trace) for n in sizes]
        if seed is not None:
            replay_driver_seed(seed, configs)
        else:
            sweep_driver_seeds(range(start, start + seeds), configs, workers)
        return
    if seed is not None:
        for n in sizes:
            r = run_seed(seed, SimConfig(nodes=n, fault_ms=fault_ms, trace=trace))
            click.echo("\n".join(r.trace))
            click.echo(f"seed {seed}, {n} nodes: {'ok' if r.ok else r.violation}")
            click.echo(
                f"faults: {len(r.faults)}, operations: {r.operations}, elections: {r.elections}, "
                f"membership changes: {r.membership_changes}"
            )
            if not r.ok:
                raise SystemExit(1)
        return
    configs = [SimConfig(nodes=n, fault_ms=fault_ms) for n in sizes]
    total = seeds * len(configs)
    with tqdm(total=total, unit="run", disable=None) as bar:

        def progress(r: SimResult) -> None:
            bar.update()
            if not r.ok:
                bar.write(f"FAILED seed {r.seed} ({r.config.nodes} nodes): {r.violation.splitlines()[0]}")

        summary = summarise(run_many(range(start, start + seeds), configs, workers=workers), progress)
    click.echo(summary.line())
    for r in summary.failures[:10]:
        print_failure(r)
        click.echo("\n".join(r.trace[-40:]), err=True)
    if summary.failures:
        raise SystemExit(1)


def replay_driver_seed(seed: int, configs: list[DriverSimConfig]) -> None:
    """The driver simulation of one seed, with its trace."""
    for cfg in configs:
        r = run_driver_seed(seed, cfg)
        click.echo("\n".join(r.trace))
        click.echo(f"seed {r.seed}, {cfg.nodes} nodes: {'ok' if r.ok else r.violation}")
        click.echo(f"faults: {len(r.faults)}, operations: {r.operations} ({r.unknown_operations} unknown), "
                   f"elections: {r.elections}, promises checked: {r.promises_checked}, errors logged: "
                   f"{len(r.errors)}, {r.end_s:.2f} virtual s")
        if not r.ok:
            click.echo(f"replay: {r.replay_command()}", err=True)
            raise SystemExit(1)


def sweep_driver_seeds(seeds: range, configs: list[DriverSimConfig], workers: int | None) -> None:
    """The driver simulation of many seeds, with a progress bar; the first failures in full."""
    failures, runs, errors = [], 0, 0
    with tqdm(total=len(seeds) * len(configs), unit="run", disable=None) as bar:
        for cfg in configs:
            for r in run_driver_seeds(seeds, cfg, workers):
                bar.update()
                runs += 1
                errors += bool(r.errors)
                if not r.ok:
                    failures.append(r)
                    bar.write(f"FAILED seed {r.seed} ({cfg.nodes} nodes): {r.violation.splitlines()[0]}")
    click.echo(f"{runs} runs, {len(failures)} failed, {errors} logged an error and carried on")
    for r in sorted(failures, key=lambda r: (r.seed, r.config.nodes))[:10]:
        click.echo(f"\nFAILED seed {r.seed} with {r.config.nodes} nodes: {r.violation}", err=True)
        click.echo(f"replay: {r.replay_command()}", err=True)
        click.echo("\n".join(r.trace[-40:]), err=True)
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
