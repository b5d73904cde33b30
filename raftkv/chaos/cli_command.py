"""`raftkv chaos`: Jepsen-style testing of a real cluster, from the command line.

Register with `main.add_command(chaos)` (from raftkv.chaos.cli_command import chaos); also runs
standalone as `python -m raftkv.chaos`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from raftkv.chaos.coordination import WORKLOADS
from raftkv.chaos.nemesis import KINDS
from raftkv.chaos.runner import EXIT_SETUP_FAILED, ChaosError, ChaosOptions, recheck, run, run_in_lab, validate
from raftkv.cli_support import access_options
from raftkv.client import Access


def _kinds(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in value.split(",") if k.strip() and k.strip() != "none")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise click.BadParameter(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}, or none")
    return kinds


@click.command()
@click.option("--duration", type=click.FloatRange(1), default=30.0, show_default=True,
              help="Seconds of workload under faults (recovery and checking come after).")
@click.option("--clients", type=click.IntRange(1, 100), default=5, show_default=True, help="Concurrent clients.")
@click.option("--keys", type=click.IntRange(1, 100), default=3, show_default=True, help="Keys they share.")
@click.option("--nemesis", default="kill,pause,partition", show_default=True, callback=_kinds,
              help=f"Comma-separated fault kinds: {', '.join(KINDS)} (netns: root only; or 'none').")
@click.option("--seed", type=int, default=0, show_default=True,
              help="The fault schedule (and client choices) replay from it.")
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True, help="Nodes to start.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="chaos-out", show_default=True,
              help="Where history.json, run.json, timeline.html and the nodes' data go.")
@click.option("--endpoints", default=None,
              help="Attach to a running cluster (comma-separated URLs) instead of starting one; "
                   "then only the partition nemesis is available, and --cacert ... --token say how to reach it.")
@access_options
@click.option("--op-timeout", type=click.FloatRange(0.1), default=3.0, show_default=True,
              help="Client request timeout (a timed-out write is 'unknown').")
@click.option("--workload", default="kv", show_default=True,
              help=f"Comma-separated: {', '.join(WORKLOADS)} (kv: read/write/CAS clients; etcd: the same clients "
                   "through each node's etcd gRPC API, on keys of their own; watch: watchers "
                   "judged for gaps, duplicates and uncommitted events; lease: leases kept alive, revoked or "
                   "left to lapse; lock: lock clients with fencing tokens and a fenced resource).")
@click.option("--secure", is_flag=True,
              help="Start the nodes with TLS on their client API and peer links (a throwaway CA in OUT/data/tls) "
                   "and auth on: every request of the run goes over TLS, authenticated.")
@click.option("--node-arg", "node_args", multiple=True, hidden=True,
              help="Extra `raftkv node` argument for every node (e.g. --unsafe-stale-reads).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--recheck", "recheck_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Run nothing: judge the saved run in this --out directory again and redraw its timeline.")
def chaos(duration: float, clients: int, keys: int, nemesis: tuple[str, ...], seed: int, nodes: int,
          out_dir: str, endpoints: str | None, access: Access, op_timeout: float, workload: str,
          secure: bool, node_args: tuple[str, ...], no_progress: bool, recheck_dir: str | None) -> None:
    """Run clients against a cluster while a nemesis kills, pauses and partitions it (and, with
    `member`, removes members and adds them back as new ones); then judge
    the history (linearizability per key, lost acknowledged writes, divergence, leaders per term).

    Exit code: 0 pass, 1 violation, 3 inconclusive (checker budget, or no recovery after
    healing), 4 the run could not be carried out.
    """
    if recheck_dir is not None:
        try:
            judgement = recheck(Path(recheck_dir))
        except ChaosError as e:
            raise click.ClickException(str(e)) from None
        click.echo(judgement.summary())
        sys.exit(judgement.exit_code)
    opts = ChaosOptions(
        duration_s=duration, clients=clients, keys=keys, nemesis=nemesis, seed=seed, nodes=nodes,
        out_dir=out_dir, endpoints=tuple(e.strip() for e in (endpoints or "").split(",") if e.strip()),
        node_args=node_args, op_timeout_s=op_timeout, progress=not no_progress,
        workload=tuple(w.strip() for w in workload.split(",") if w.strip()), access=access, secure=secure,
    )
    problems = validate(opts)
    if problems:
        raise click.UsageError("; ".join(problems))
    try:
        if "netns" in opts.nemesis:
            sys.exit(run_in_lab(opts))
        judgement = run(opts)
    except ChaosError as e:
        click.echo(f"chaos: cannot run: {e}", err=True)
        sys.exit(EXIT_SETUP_FAILED)
    click.echo(judgement.summary())
    sys.exit(judgement.exit_code)
