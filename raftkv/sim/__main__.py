"""Command line: run seeded simulations with a progress bar, or replay one seed with its trace.

python -m raftkv.sim --seeds 10000            # seeds 0..9999, 3 and 5 nodes
python -m raftkv.sim --seed 1234 --nodes 5 --trace
"""

from __future__ import annotations

import click
from tqdm import tqdm

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
def main(seeds: int, start: int, seed: int | None, nodes: str, fault_ms: int, workers: int | None, trace: bool) -> None:
    """Deterministic simulation of raftkv's Raft core under faults, checked after every step."""
    sizes = [int(n) for n in nodes.split(",")]
    if any(n < 1 for n in sizes):
        raise click.BadParameter("cluster sizes must be positive", param_hint="--nodes")
    if seed is not None:
        for n in sizes:
            r = run_seed(seed, SimConfig(nodes=n, fault_ms=fault_ms, trace=trace))
            click.echo("\n".join(r.trace))
            click.echo(f"seed {seed}, {n} nodes: {'ok' if r.ok else r.violation}")
            click.echo(f"faults: {len(r.faults)}, operations: {r.operations}, elections: {r.elections}")
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


if __name__ == "__main__":
    main()
