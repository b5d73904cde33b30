"""The `raftkv` command: run nodes and clusters, talk to them, simulate, test them under chaos."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from raftkv.chaos.cli_command import chaos as chaos_command
from raftkv.client import Client, ClusterUnreachableError
from raftkv.dashboard import promtext
from raftkv.dashboard.cli_command import dashboard as dashboard_command
from raftkv.node.config import ConfigError, NodeConfig, load_toml, parse_cluster
from raftkv.sim.__main__ import main as sim_command

DEFAULT_ENDPOINTS = "http://127.0.0.1:3000,http://127.0.0.1:3001,http://127.0.0.1:3002"


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.getLevelName(os.environ.get("RAFTKV_LOG", "WARNING").upper())
    logging.basicConfig(
        level=level,
        format='{"t":"%(asctime)s","level":"%(levelname)s","logger":"%(name)s","msg":"%(message)s"}',
    )


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (default: warnings only; RAFTKV_LOG=INFO for more).")
def main(verbose: bool) -> None:
    """raftkv: a linearizable key-value store replicated with Raft."""
    setup_logging(verbose)


@main.command()
@click.option("--id", "node_id", help="This node's id (one of the members).")
@click.option("--cluster", help="Members: id@host:http_port:raft_port,... (or use --config).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: data/<id>.")
@click.option("--tick-ms", type=click.IntRange(1, 1000), default=None, help="Length of one Raft tick.")
@click.option("--snapshot-every", type=click.IntRange(0), default=None, help="Applied entries between snapshots.")
@click.option("--snapshot-retain", type=click.IntRange(0), default=None, help="Entries kept after a snapshot.")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: CA file.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: cert.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: key.")
@click.option("--unsafe-skip-fsync", is_flag=True, hidden=True, help="Testing only: acknowledge before fsync.")
@click.option("--unsafe-stale-reads", is_flag=True, hidden=True, help="Testing only: followers skip ReadIndex.")
def node(
    node_id: str | None,
    cluster: str | None,
    config_file: Path | None,
    data_dir: Path | None,
    tick_ms: int | None,
    snapshot_every: int | None,
    snapshot_retain: int | None,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    unsafe_skip_fsync: bool,
    unsafe_stale_reads: bool,
) -> None:
    """Run one node (one per host in a real cluster)."""
    from raftkv.node.server import run

    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "tick_ms": tick_ms,
            "snapshot_every": snapshot_every,
            "snapshot_retain_entries": snapshot_retain,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "unsafe_skip_fsync": unsafe_skip_fsync or None,
            "unsafe_stale_reads": unsafe_stale_reads or None,
        }.items()
        if v is not None
    }
    try:
        if config_file is not None:
            cfg = load_toml(config_file, node_id)
            if data_dir is not None or overrides:
                cfg = NodeConfig(**{**cfg.__dict__, **overrides, **({"data_dir": data_dir} if data_dir else {})})
        elif cluster and node_id:
            cfg = NodeConfig(
                node_id=node_id,
                data_dir=data_dir or Path("data") / node_id,
                members=parse_cluster(cluster),
                **overrides,
            )
        else:
            raise ConfigError("give --id and --cluster, or --config")
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    from raftkv.storage import DataDirLockedError

    try:
        run(cfg)
    except DataDirLockedError as e:
        raise click.ClickException(str(e)) from None
    except OSError as e:
        raise click.ClickException(f"cannot start {cfg.node_id}: {e}") from None


@main.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--http-port", type=int, default=3000, show_default=True, help="First node's client port.")
@click.option("--raft-port", type=int, default=4000, show_default=True, help="First node's peer port.")
@click.option("--dashboard-port", type=int, default=8080, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True)
def up(nodes: int, host: str, http_port: int, raft_port: int, dashboard_port: int, data_dir: Path) -> None:
    """Run a local cluster (node1.. on consecutive ports) with its dashboard, until Ctrl-C."""
    from raftkv.supervisor import Supervisor, local_members

    members = local_members(nodes, host, http_port, raft_port)
    supervisor = Supervisor(members, data_dir)
    supervisor.start_all()
    for m in members:
        click.echo(f"{m.id}: {m.url}  (data: {data_dir / m.id})")
    from raftkv.dashboard.server import run_dashboard

    click.echo(f"dashboard: http://{host}:{dashboard_port}")
    try:
        run_dashboard(host, dashboard_port, [m.url for m in members], supervisor)
    except KeyboardInterrupt:
        pass
    finally:
        click.echo("stopping nodes...")
        supervisor.stop_all()


def endpoints_option(fn: Any) -> Any:
    return click.option(
        "--endpoints",
        default=lambda: os.environ.get("RAFTKV_ENDPOINTS", DEFAULT_ENDPOINTS),
        show_default="RAFTKV_ENDPOINTS or the local cluster",
        help="Comma-separated node URLs.",
    )(fn)


def _call(endpoints: str, method: str, path: str, body: Any = None) -> Any:
    async def go() -> tuple[int, Any]:
        async with Client(endpoints.split(",")) as c:
            return await c.request(method, path, body)

    try:
        status, data = asyncio.run(go())
    except ClusterUnreachableError as e:
        raise click.ClickException(f"no endpoint answered: {e}") from None
    if status >= 400:
        message = data.get("error", data) if isinstance(data, dict) else data
        click.echo(f"error {status}: {message}", err=True)
        sys.exit(1)
    return data


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string


@main.command()
@endpoints_option
@click.argument("key")
@click.argument("value")
@click.option("--prev-value", help="Only if the current value equals this (JSON or a bare string).")
@click.option("--prev-revision", type=int, help="Only if the key's mod_revision equals this.")
@click.option("--create-only", is_flag=True, help="Only if the key does not exist.")
def put(
    endpoints: str, key: str, value: str, prev_value: str | None, prev_revision: int | None, create_only: bool
) -> None:
    """Write KEY=VALUE (VALUE is JSON, or taken as a string)."""
    body: dict[str, Any] = {"value": _parse_value(value)}
    if prev_value is not None:
        body["prev_value"] = _parse_value(prev_value)
    if prev_revision is not None:
        body["prev_revision"] = prev_revision
    if create_only:
        body["prev_exist"] = False
    data = _call(endpoints, "PUT", f"/kv/{key}", body)
    click.echo(json.dumps(data))


@main.command()
@endpoints_option
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read the answering node's local state (no ReadIndex).")
def get(endpoints: str, key: str, stale: bool) -> None:
    """Read KEY (linearizable by default)."""
    data = _call(endpoints, "GET", f"/kv/{key}" + ("?stale=true" if stale else ""))
    click.echo(json.dumps(data["value"]))


@main.command(name="del")
@endpoints_option
@click.argument("key")
def delete(endpoints: str, key: str) -> None:
    """Delete KEY."""
    data = _call(endpoints, "DELETE", f"/kv/{key}")
    click.echo(json.dumps(data))


STATUS_COLUMNS = (
    ("ENDPOINT", lambda s: s["url"]),
    ("ID", lambda s: s["nodeId"]),
    ("ROLE", lambda s: s["state"]),
    ("TERM", lambda s: s["term"]),
    ("LEADER", lambda s: s["leaderId"] or "-"),
    ("COMMIT", lambda s: s["commitIndex"]),
    ("APPLIED", lambda s: s["lastApplied"]),
    ("LOG", lambda s: s["logLength"]),
    ("SNAPSHOT", lambda s: s["snapshotIndex"]),
    ("KEYS", lambda s: s["keys"]),
    ("ELECTIONS", lambda s: s["metrics"]["electionsStarted"]),
    ("LEADER CHANGES", lambda s: s["metrics"]["leaderChanges"]),
    ("FSYNC ms", lambda s: s["metrics"]["fsyncMeanMs"]),
    ("COMMIT ms", lambda s: s["metrics"]["commitMeanMs"]),
    ("MAX LAG", lambda s: s["metrics"]["maxLagEntries"]),
)


def _headline_metrics(text: str) -> dict[str, float | None]:
    """The figures `status` shows from a node's /metrics (None: nothing observed yet)."""
    sample = promtext.parse(text)

    def mean_ms(histogram: str) -> float | None:
        seconds = promtext.mean(sample, histogram)
        return None if seconds is None else round(1000 * seconds, 2)

    return {
        "electionsStarted": promtext.value(sample, "raft_elections_started_total"),
        "leaderChanges": promtext.value(sample, "raft_leader_changes_total"),
        "fsyncMeanMs": mean_ms("raft_wal_fsync_seconds"),
        "commitMeanMs": mean_ms("raft_propose_to_commit_seconds"),
        "maxLagEntries": max(promtext.series(sample, "raft_peer_lag_entries"), default=None),
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


@main.command()
@endpoints_option
@click.option("--json", "as_json", is_flag=True, help="Print each node's /raft-state with the headline metrics.")
def status(endpoints: str, as_json: bool) -> None:
    """A table per node, like `etcdctl endpoint status -w table`, with headline metrics."""

    async def gather() -> list[dict]:
        rows = []
        async with Client(endpoints.split(","), timeout_s=2.0) as c:
            for ep in c.endpoints:
                try:
                    _, state = await c.request("GET", "/raft-state", endpoint=ep)
                    if not isinstance(state, dict):
                        rows.append({"url": ep, "problem": "bad /raft-state", "error": str(state)})
                        continue
                    _, text = await c.request("GET", "/metrics", endpoint=ep)
                    if not isinstance(text, str):  # a JSON answer is an error, not metrics
                        raise ValueError(f"/metrics answered {text!r}")
                    state["metrics"] = _headline_metrics(text)
                    rows.append(state)
                except ClusterUnreachableError as e:
                    rows.append({"url": ep, "problem": "unreachable", "error": str(e)})
                except ValueError as e:  # not Prometheus text (prometheus_client's parser says so too)
                    rows.append({"url": ep, "problem": "bad /metrics", "error": str(e)})
        return rows

    rows = asyncio.run(gather())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [[name for name, _ in STATUS_COLUMNS]]
    for row in rows:
        if "error" in row:
            table.append([row["url"], row["problem"]] + [""] * (len(STATUS_COLUMNS) - 2))
        else:
            table.append([_cell(get(row)) for _, get in STATUS_COLUMNS])
    widths = [max(len(r[i]) for r in table) for i in range(len(STATUS_COLUMNS))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
    if all("error" in r for r in rows):
        sys.exit(1)


main.add_command(sim_command, name="sim")
main.add_command(dashboard_command, name="dashboard")
main.add_command(chaos_command, name="chaos")
