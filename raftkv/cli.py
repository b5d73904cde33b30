"""The `raftkv` command: run nodes and clusters, talk to them, simulate, test them under chaos."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import io
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from raftkv import promtext
from raftkv.byte_text import ESCAPES
from raftkv.cli_auth import auth, role, user
from raftkv.cli_coordination import elect, lease, lock, watch
from raftkv.cli_support import (
    UNAUTHENTICATED,
    Connection,
    access_of,
    call,
    connection_options,
    echo_table,
    parse_value,
    run,
)
from raftkv.client import ClusterUnreachableError, Credentials, endpoint_url, key_path
from raftkv.dashboard.cli_command import dashboard as dashboard_command
from raftkv.logs import setup_logging
from raftkv.node.config import MAX_PORT, ConfigError, NodeConfig, load_toml
from raftkv.ports import (
    DEFAULT_ETCD_PORT,
    OPEN_TO_NETWORK,
    WILDCARD_HOSTS,
    Listener,
    PortUnavailableError,
    check_listeners,
    node_listeners,
    reachable_urls,
)

DEFAULT_DASHBOARD = "http://127.0.0.1:8080"
PREVIEW_CHARS = 60  # of a deleted value, as `raftkv del` shows it
LAB_TIMEOUT_S = 30.0  # a graceful stop through the dashboard waits for the node to exit
LAB_ADD_TIMEOUT_S = 120.0  # a new node joins, catches up (a snapshot, then the log) and is promoted
MEMBER_CHANGE_TIMEOUT_S = 15.0  # a follower forwards a change; a leader that leaves hands over first


def trace_env(dashboard_host: str, dashboard_port: int, ratio: float) -> dict[str, str]:
    """The standard OTEL_* variables that point `raftkv up`'s nodes at its dashboard's OTLP receiver."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{dashboard_host}:{dashboard_port}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": f"{ratio:g}",
            "OTEL_BSP_SCHEDULE_DELAY": "500"}  # the dashboard shows a trace within a second


class _CommandGroup(click.Group):
    """The `raftkv` group, whose heaviest commands (the simulator, chaos) are imported only when
    run, so that a client command starts without loading them."""

    LAZY = {"sim": ("raftkv.sim.__main__", "main"), "chaos": ("raftkv.chaos.cli_command", "chaos")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            module, attribute = self.LAZY[cmd_name]
            return getattr(importlib.import_module(module), attribute)
        return super().get_command(ctx, cmd_name)


@click.group(cls=_CommandGroup)
@click.option("-v", "--verbose", is_flag=True, help="Debug logging (default: warnings only; RAFTKV_LOG=INFO for more).")
def main(verbose: bool) -> None:
    """raftkv: a linearizable key-value store replicated with Raft."""
    setup_logging(verbose)
    if isinstance(sys.stdout, io.TextIOWrapper):
        # A key or value of bytes that are not UTF-8 (argv brings them in as escaped bytes, see
        # byte_text.py) prints as those bytes, as etcdctl prints them.
        sys.stdout.reconfigure(errors=ESCAPES)


@main.command()
@click.option("--id", "node_id", help="A founding member's id (one of --cluster's).")
@click.option("--cluster", help="The founding members: id@host:http_port:raft_port,... (or use --config).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--join", "join_url", help="Join the live cluster at this client URL (with --name and --advertise-*).")
@click.option("--name", help="With --join: this member's name (its id is given by the cluster).")
@click.option("--advertise-client", help="With --join: the client URL others reach this node at (http://host:port).")
@click.option("--advertise-peer", help="With --join: the host:port peers reach this node's Raft port at.")
@click.option("--join-token", envvar="RAFTKV_JOIN_TOKEN", show_envvar=True,
              help="With --join, when the cluster has auth on: a token of a user with the admin permission "
              "(raftkv auth token --user root) to ask the cluster to add this node with.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), help="Default: data/<id or name>.")
@click.option("--listen-client", help="Bind the client API here (host or host:port; default: the advertised one), "
              "e.g. 0.0.0.0 behind NAT or in a container.")
@click.option("--listen-peer", help="Bind the Raft port here (host or host:port; default: the advertised one).")
@click.option("--listen-etcd", help="Serve etcd's v3 gRPC API here (host:port), for etcdctl and etcd's clients.")
@click.option("--tick-ms", type=click.IntRange(1, 1000), default=None, help="Length of one Raft tick.")
@click.option("--snapshot-every", type=click.IntRange(0), default=None, help="Applied entries between snapshots.")
@click.option("--snapshot-retain", type=click.IntRange(0), default=None, help="Entries kept after a snapshot.")
@click.option("--no-leader-hold-ms", type=click.IntRange(0, 60_000), default=None,
              help="How long a write or read waits for a leader before a 503 (default: one maximum election timeout).")
@click.option("--history-revisions", type=click.IntRange(0), default=None,
              help="Key history kept: the last N revisions (default 100000; 0: until compacted by POST /compact).")
@click.option("--auto-compaction-retention", type=click.FloatRange(0, min_open=True), default=None,
              help="Also forget history older than this many seconds (as etcd's periodic auto-compaction).")
@click.option("--max-client-connections", type=click.IntRange(1), default=None,
              help="Client connections open at once; one more is answered 503 (default 1024).")
@click.option("--client-header-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds a request's head may take to arrive from its first byte, else 408 (default 10).")
@click.option("--client-body-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds a request's body may take to arrive after its head, else 408 (default 30).")
@click.option("--client-idle-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds a client connection may sit idle between requests (default 75).")
@click.option("--client-send-timeout", type=click.FloatRange(0, min_open=True), default=None,
              help="Seconds a client may leave an answer, a watch or a WebSocket unread before it is cut off "
              "(default 30).")
@click.option("--tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: CA file.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: cert.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Peer mTLS: key.")
@click.option("--client-tls-cert", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Serve the client API (and the etcd API) over TLS with this certificate (with --client-tls-key).")
@click.option("--client-tls-key", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The client API certificate's key.")
@click.option("--client-tls-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Client API mutual TLS: require client certificates this CA signed. Also what this node trusts "
              "when it calls other members' client APIs (default: --tls-ca, else the system's CAs).")
@click.option("--enable-fault-injection", is_flag=True,
              help="Serve the lab's routes that break the cluster on purpose (force-election, simulate-partition, "
              "simulate-link, lab); off: they answer 403.")
@click.option("--unsafe-skip-fsync", is_flag=True, hidden=True,
              help="Testing only: acknowledge before fsync (the WAL is written and synced every 3 s).")
@click.option("--unsafe-stale-reads", is_flag=True, hidden=True, help="Testing only: followers skip ReadIndex.")
@click.option("--wal-segment-bytes", type=click.IntRange(4096), default=None, hidden=True,
              help="How long each WAL segment is made (default 64 MiB); small ones make tests compact the WAL.")
def node(node_id: str | None, cluster: str | None, config_file: Path | None, join_url: str | None, name: str | None,
         advertise_client: str | None, advertise_peer: str | None, join_token: str | None, data_dir: Path | None,
         listen_client: str | None,
         listen_peer: str | None, listen_etcd: str | None,
         tick_ms: int | None, snapshot_every: int | None, snapshot_retain: int | None,
         no_leader_hold_ms: int | None, history_revisions: int | None, auto_compaction_retention: float | None,
         max_client_connections: int | None, client_header_timeout: float | None, client_body_timeout: float | None,
         client_idle_timeout: float | None, client_send_timeout: float | None,
         tls_ca: Path | None, tls_cert: Path | None, tls_key: Path | None, client_tls_cert: Path | None,
         client_tls_key: Path | None, client_tls_ca: Path | None, enable_fault_injection: bool,
         unsafe_skip_fsync: bool, unsafe_stale_reads: bool, wal_segment_bytes: int | None) -> None:
    """Run one node (one per host in a real cluster): a founding member (--id, --cluster), or a new
    member joining a live cluster (--join, --name, --advertise-client, --advertise-peer)."""
    from raftkv.node.startup import claim_data_dir, founding_config, joining_config
    from raftkv.node_server import run

    options: dict[str, Any] = {
        k: v
        for k, v in {
            "listen_client": listen_client,
            "listen_peer": listen_peer,
            "listen_etcd": listen_etcd,
            "tick_ms": tick_ms,
            "snapshot_every": snapshot_every,
            "snapshot_retain_entries": snapshot_retain,
            "no_leader_hold_ms": no_leader_hold_ms,
            "auto_compaction_retention_s": auto_compaction_retention,
            "max_client_connections": max_client_connections,
            "client_header_timeout_s": client_header_timeout,
            "client_body_timeout_s": client_body_timeout,
            "client_idle_timeout_s": client_idle_timeout,
            "client_send_timeout_s": client_send_timeout,
            "tls_ca": tls_ca,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "client_tls_cert": client_tls_cert,
            "client_tls_key": client_tls_key,
            "client_tls_ca": client_tls_ca,
            "enable_fault_injection": enable_fault_injection or None,
            "unsafe_skip_fsync": unsafe_skip_fsync or None,
            "unsafe_stale_reads": unsafe_stale_reads or None,
            "wal_segment_bytes": wal_segment_bytes,
        }.items()
        if v is not None
    }
    if history_revisions is not None:
        options["history_retention_revisions"] = history_revisions or None  # 0: no limit by count
    try:
        if config_file is not None:
            cfg = load_toml(config_file, node_id)
            if data_dir is not None or options:
                cfg = NodeConfig(**{**cfg.__dict__, **options, **({"data_dir": data_dir} if data_dir else {})})
        elif join_url:
            if not (name and advertise_client and advertise_peer) or cluster or node_id:
                raise ConfigError("--join takes --name, --advertise-client and --advertise-peer (not --id or "
                                  "--cluster: the cluster gives the id)")
            credentials = None if join_token is None else Credentials(token=join_token)
            cfg = asyncio.run(joining_config(name, join_url, advertise_client, advertise_peer,
                                             data_dir or Path("data") / name, _check_can_start, credentials,
                                             **options))
        elif cluster and node_id:
            cfg = founding_config(node_id, cluster, data_dir or Path("data") / node_id, **options)
        else:
            raise ConfigError("give --id and --cluster (a founding member), --join (a new member), or --config")
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    from raftkv.storage import CorruptSnapshotError, CorruptWALError, DataDirLockedError

    try:
        _check_can_start(cfg)
        claim_data_dir(cfg)
        run(cfg)
    except DataDirLockedError as e:
        raise click.ClickException(str(e)) from None
    except (CorruptWALError, CorruptSnapshotError) as e:  # found at start, before anything was served
        raise click.ClickException(
            f"{cfg.node_id} not started: {e}\nIts data directory cannot be trusted: replace the node as README's "
            "\"Running raftkv safely\" says (raftkv member remove, move the directory aside, raftkv node --join)"
        ) from None
    except OSError as e:
        raise click.ClickException(f"cannot start {cfg.node_id}: {e}") from None


def _etcd_ports(host: str, first: int | None, count: int) -> list[int]:
    """Consecutive ports from `first`; by default from DEFAULT_ETCD_PORT when all are free, else
    ports the system picks (a second `up`, or an etcd, may hold the default ones)."""
    if first is not None:
        return [first + i for i in range(count)]
    wanted = [DEFAULT_ETCD_PORT + i for i in range(count)]
    try:
        check_listeners(Listener(host, port, "an etcd API port") for port in wanted)
    except PortUnavailableError:
        from raftkv.supervisor import free_ports

        try:
            return free_ports(count)
        except ValueError as e:  # $RAFTKV_FREE_PORTS does not name a range
            raise click.UsageError(str(e)) from None
    return wanted


def _check_can_start(cfg: NodeConfig) -> None:
    """Before anything is started or written (or a cluster asked to add the node): the node's ports
    must be free, and its client TLS files usable."""
    from raftkv.tls import TLSFileError, server_context

    try:
        check_listeners(node_listeners(cfg))
    except PortUnavailableError as e:
        raise click.ClickException(f"{e}; {cfg.node_id} not started") from None
    try:
        if cfg.client_tls_cert is not None and cfg.client_tls_key is not None:
            server_context(cfg.client_tls_cert, cfg.client_tls_key, cfg.client_tls_ca)
        _ = cfg.member_access.tls.context
    except TLSFileError as e:
        raise click.ClickException(f"{e}; {cfg.node_id} not started") from None


@main.command()
@click.option("--nodes", type=click.IntRange(1, 9), default=3, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address the nodes' client APIs and the dashboard listen on; 0.0.0.0 opens them to the network.",
)
@click.option("--http-port", type=click.IntRange(1, MAX_PORT), default=3000, show_default=True,
              help="First node's client port.")
@click.option("--raft-port", type=click.IntRange(1, MAX_PORT), default=4000, show_default=True,
              help="First node's peer port.")
@click.option("--etcd-port", type=click.IntRange(1, MAX_PORT), default=None,
              help=f"First node's etcd API (gRPC) port [default: {DEFAULT_ETCD_PORT}, or ports the system picks "
              "when those are taken].")
@click.option("--dashboard-port", type=click.IntRange(1, MAX_PORT), default=8080, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("data"), show_default=True)
@click.option("--tls", is_flag=True, help="Serve the nodes' client APIs over HTTPS (and their etcd APIs over TLS), "
              "with mutual TLS between peers, under a throwaway CA made in DATA_DIR/tls/ (clients trust its ca.pem).")
@click.option("--user", "dashboard_user", envvar="RAFTKV_USER", show_envvar=True, metavar="NAME[:PASSWORD]",
              help="Once auth is on (raftkv auth enable): the user the dashboard watches the nodes as (one who may "
              "read every key); without a password, RAFTKV_PASSWORD, else asked for on a terminal.")
@click.option("--token", "dashboard_token", envvar="RAFTKV_TOKEN", show_envvar=True,
              help="Once auth is on: a token the dashboard watches the nodes with, instead of --user.")
@click.option("--trace", is_flag=True, help="The nodes send their traces (OTLP) to the dashboard, which shows them.")
@click.option("--trace-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="With --trace: the share of requests traced (those sent with X-Raftkv-Trace: 1 always are).")
def up(nodes: int, host: str, http_port: int, raft_port: int, etcd_port: int | None, dashboard_port: int,
       data_dir: Path, tls: bool, dashboard_user: str | None, dashboard_token: str | None, trace: bool,
       trace_ratio: float) -> None:
    """Run a local cluster (node1.. on consecutive ports) with its dashboard, until Ctrl-C.

    Node exits and restarts are printed as they happen; `raftkv lab` starts, stops and restarts
    the nodes from another terminal, and adds and removes nodes."""
    from raftkv.client import Access
    from raftkv.dashboard.server import run_dashboard
    from raftkv.lab_ca import make_lab_certificates
    from raftkv.ports import network_addresses
    from raftkv.supervisor import Supervisor, local_members
    from raftkv.tls import ClientTLS

    # On every interface, the nodes still talk to each other (and the dashboard to them) over
    # loopback: only their client APIs and the dashboard are opened to the network.
    everywhere = host in WILDCARD_HOSTS
    local_host = "127.0.0.1" if everywhere else host
    members = local_members(nodes, local_host, http_port, raft_port, client_tls=tls)
    listen_client = host if everywhere else None
    node_args = ["--listen-client", listen_client] if listen_client else []
    credentials = access_of(user=dashboard_user, token=dashboard_token).credentials
    access = Access(credentials=credentials)
    if tls:  # a new CA each time: nothing but this run's nodes holds a certificate it signed
        certs = make_lab_certificates(data_dir / "tls", [local_host, *(network_addresses(host) if everywhere else [])])
        node_args += certs.node_args()
        access = Access(ClientTLS(ca=certs.ca), credentials)
    # The nodes an earlier `up` on this data directory added run again, and the ones it removed do not.
    # nodeN's etcd port is the Nth whatever was removed since; the nodes added later get theirs from the ledger
    etcd_ports = dict(zip((m.id for m in members), _etcd_ports(host, etcd_port, len(members)), strict=True))
    supervisor = Supervisor(members, data_dir, node_args, on_event=click.echo,
                            env=trace_env(local_host, dashboard_port, trace_ratio) if trace else None,
                            etcd_ports=etcd_ports, etcd_host=host)
    etcd_listen = {n.member.id: f"{host}:{n.etcd_port}" for n in supervisor.nodes.values() if n.etcd_port is not None}
    configs = [NodeConfig(node_id=n.member.id, data_dir=n.data_dir, members={n.member.id: n.member},
                          listen_client=listen_client, listen_etcd=etcd_listen.get(n.member.id))
               for n in supervisor.nodes.values()]
    try:
        check_listeners([*(listener for cfg in configs for listener in node_listeners(cfg)),
                         Listener(host, dashboard_port, "the dashboard")])
    except PortUnavailableError as e:
        raise click.ClickException(f"{e}; nothing was started") from None
    supervisor.start_all()
    supervisor.watch_exits()
    scheme = "https" if tls else "http"
    for n in supervisor.nodes.values():
        joined = " (joined later)" if n.join_url else ""
        urls = ", ".join(reachable_urls(host, n.member.http_port, scheme))
        click.echo(f"{n.member.id}: {urls}  (data: {n.data_dir}){joined}")
        if n.member.id in etcd_listen:
            click.echo(f"{n.member.id} etcd API (gRPC{' over TLS' if tls else ''}): "
                       f"{local_host}:{etcd_listen[n.member.id].rpartition(':')[2]}")
    if tls:
        first = next(iter(supervisor.nodes.values())).member.url
        click.echo(f"TLS: clients trust the CA in {certs.ca}, e.g. curl --cacert {certs.ca} {first}/health")
        click.echo(f"  export RAFTKV_CACERT={certs.ca} RAFTKV_ENDPOINTS="
                   + ",".join(n.member.url for n in supervisor.nodes.values()))
    click.echo(f"dashboard: {', '.join(reachable_urls(host, dashboard_port))}")
    if trace:
        click.echo(f"tracing: the nodes send {trace_ratio:g} of their requests' traces to the dashboard "
                   "(X-Raftkv-Trace: 1 asks for one)")
    if everywhere:
        click.echo(OPEN_TO_NETWORK.format(what="the dashboard's controls (crash, pause, partition the nodes) "
                                               "and the nodes' APIs"))
    try:
        run_dashboard(host, dashboard_port, [n.member.url for n in supervisor.nodes.values()], supervisor,
                      access=access)
    except KeyboardInterrupt:
        pass
    except OSError as e:  # lost the port between the check and the bind
        raise click.ClickException(f"the dashboard cannot listen on {host}:{dashboard_port}: {e.strerror}") from None
    finally:
        click.echo("stopping nodes...")
        supervisor.stop_all()


@main.command()
@connection_options
@click.argument("key")
@click.argument("value")
@click.option("--prev-value", help="Only if the current value equals this (JSON or a bare string).")
@click.option("--prev-revision", type=int, help="Only if the key's mod_revision equals this.")
@click.option("--create-only", is_flag=True, help="Only if the key does not exist.")
@click.option("--lease", "lease_id", type=click.IntRange(1), help="Attach the key to this lease (raftkv lease grant).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer, the previous value in full.")
def put(conn: Connection, key: str, value: str, prev_value: str | None, prev_revision: int | None,
        create_only: bool, lease_id: int | None, as_json: bool) -> None:
    """Write VALUE under KEY: `raftkv put saldo_cuenta_123 1000` (VALUE is JSON, or taken as a string)."""
    body: dict[str, Any] = {"value": parse_value(value)}
    if lease_id is not None:
        body["lease"] = lease_id
    if prev_value is not None:
        body["prev_value"] = parse_value(prev_value)
    if prev_revision is not None:
        body["prev_revision"] = prev_revision
    if create_only:
        body["prev_exist"] = False
    data = call(conn, "PUT", key_path(key), body)
    if as_json:
        click.echo(json.dumps(data))
    else:
        was = "" if data.get("prev") is None else f"; it was {_preview(data['prev']['value'])}"
        click.echo(f"put {key} at revision {data['revision']}{was}")


@main.command()
@connection_options
@click.argument("key")
@click.option("--stale", is_flag=True, help="Read the answering node's local state (no ReadIndex).")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer (value, revisions, node) as JSON.")
def get(conn: Connection, key: str, stale: bool, as_json: bool) -> None:
    """Read KEY (linearizable by default): a string value as it is, any other as JSON."""
    data = call(conn, "GET", key_path(key) + ("?stale=true" if stale else ""))
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(_as_text(data["value"]))


@main.command(name="del")
@connection_options
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the whole answer, the previous value in full.")
def delete(conn: Connection, key: str, as_json: bool) -> None:
    """Delete KEY (exit 1 when absent)."""
    data = call(conn, "DELETE", key_path(key))
    if as_json:
        click.echo(json.dumps(data))
    else:
        click.echo(f"deleted {key} at revision {data['revision']}; it was {_preview(data['prev']['value'])}")


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _preview(value: Any) -> str:
    """A value bounded for a terminal: its first PREVIEW_CHARS characters, and its size when cut."""
    text = json.dumps(value)
    if len(text) <= PREVIEW_CHARS:
        return text
    return f"{text[:PREVIEW_CHARS]}… ({_size(len(text.encode()))} of JSON)"


def _size(n_bytes: int) -> str:
    for unit in ("B", "KiB"):
        if n_bytes < 1024:
            return f"{n_bytes:g} {unit}"
        n_bytes = round(n_bytes / 1024, 1)
    return f"{n_bytes:g} MiB"


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
    ("STALLS", lambda s: s["metrics"]["loopStalls"]),
)
STALL_S = 0.1  # a tick this late means the event loop was held: half the shortest default election timeout


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
        "loopStalls": promtext.count_above(promtext.buckets(sample, "raft_tick_lateness_seconds"), STALL_S),
    }


def _cell(value: object) -> str:
    if value is None:
        return "-"
    return f"{value:g}" if isinstance(value, float) else str(value)


@main.command()
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print each node's /raft-state with the headline metrics.")
def status(conn: Connection, as_json: bool) -> None:
    """A table per node, like `etcdctl endpoint status -w table`, with headline metrics."""

    async def gather() -> list[dict]:
        rows = []
        async with conn.client(timeout_s=2.0) as c:
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
    else:
        blank = [""] * (len(STATUS_COLUMNS) - 2)
        echo_table(
            [name for name, _ in STATUS_COLUMNS],
            [[row["url"], row["problem"], *blank] if "error" in row else [_cell(get(row)) for _, get in STATUS_COLUMNS]
             for row in rows],
        )
    if any("error" in row for row in rows):  # as `etcdctl endpoint health`: every endpoint must answer
        sys.exit(1)


# ---------------------------------------------------------------------- membership ------------------

MEMBER_COLUMNS = (
    ("ID", lambda m: m["id"]),
    ("NAME", lambda m: m["name"] or "(not started)"),  # added by its peer address alone (etcdctl member add)
    ("ROLE", lambda m: m["role"]),
    ("LEADER", lambda m: "yes" if m["isLeader"] else "-"),
    ("CLIENT URL", lambda m: m["clientURL"] or None),
    ("PEER URL", lambda m: m["peerURL"]),
    ("MATCH", lambda m: m.get("matchIndex")),
    ("LAG", lambda m: m.get("lagEntries")),
)


@main.group()
def member() -> None:
    """The cluster's members, like `etcdctl member ...`: list, add (a learner by default), promote, update, remove.

    MEMBER is a member's id or its name. Any node takes a change and hands it to the leader."""


@member.command(name="list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the leader's GET /members answer.")
def member_list(conn: Connection, as_json: bool) -> None:
    """Each member: id, name, role (voter or learner), leader, URLs, and on the leader how far behind it is."""
    view = run(lambda: _members_from_leader(conn))
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    echo_table([name for name, _ in MEMBER_COLUMNS],
                [[_cell(get(m)) for _, get in MEMBER_COLUMNS] for m in view["members"]])
    if view.get("removedIDs"):
        click.echo(f"removed for good: {', '.join(view['removedIDs'])}")


async def _members_from_leader(conn: Connection) -> tuple[int, Any]:
    """GET /members, from the leader when it answers (only the leader knows each member's lag)."""
    async with conn.client(timeout_s=5.0) as c:
        status, view = await c.request("GET", "/members")
        leader = _leader_of(view) if status == 200 else None
        if leader is None or view.get("node") == leader["id"]:
            return status, view
        with contextlib.suppress(ClusterUnreachableError):
            leaders_status, leaders_view = await c.request("GET", "/members", endpoint=leader["clientURL"])
            if leaders_status == 200:
                return leaders_status, leaders_view
        return status, view


def _leader_of(view: dict) -> dict | None:
    return next((m for m in view["members"] if m["id"] == view.get("leader")), None)


@member.command(name="add")
@connection_options
@click.argument("name")
@click.option("--client-url", required=True, help="The client URL the new node will serve (http://host:port).")
@click.option("--peer-url", required=True, help="The host:port peers will reach its Raft port at.")
@click.option("--voter", is_flag=True, help="A voter at once (default: a learner, to promote once it caught up).")
@click.option("--json", "as_json", is_flag=True, help="Print the cluster's answer.")
def member_add(conn: Connection, name: str, client_url: str, peer_url: str, voter: bool, as_json: bool) -> None:
    """Add NAME to the cluster; prints its id and the command that starts it."""
    body = {"name": name, "clientURL": client_url, "peerURL": peer_url, "learner": not voter}
    answer = call(conn, "POST", "/members", body, timeout_s=MEMBER_CHANGE_TIMEOUT_S)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    added = answer["member"]
    asked = next((m for m in answer["members"] if m["id"] == answer.get("node")), None) or _leader_of(answer)
    join_url = asked["clientURL"] if asked else conn.endpoints[0]
    click.echo(f"added {added['name']} as a {added['role']}: id {added['id']}")
    click.echo("start it on its machine with:")
    click.echo("  " + shlex.join(["raftkv", "node", "--join", join_url, "--name", added["name"],
                                  "--advertise-client", added["clientURL"], "--advertise-peer", added["peerURL"]]))


@member.command(name="promote")
@connection_options
@click.argument("member_ref", metavar="MEMBER")
def member_promote(conn: Connection, member_ref: str) -> None:
    """Make a learner a voter (refused while it lacks more than 100 of the leader's entries)."""
    answer = _member_change(conn, "POST", member_ref, "/promote")
    promoted = answer["member"]
    click.echo(f"promoted {promoted['name']} ({promoted['id']}) to {promoted['role']}")


@member.command(name="update")
@connection_options
@click.argument("member_ref", metavar="MEMBER")
@click.option("--peer-url", required=True, help="The host:port peers will reach its Raft port at from now on.")
def member_update(conn: Connection, member_ref: str, peer_url: str) -> None:
    """Move a member to a new peer address (its machine moved); then restart its node listening there."""
    answer = _member_change(conn, "PATCH", member_ref, body={"peerURL": peer_url})
    moved = answer["member"]
    click.echo(f"{moved['name'] or moved['id']} ({moved['id']}) is now reached by its peers at {moved['peerURL']}")
    click.echo("restart its node listening there, with its other options as before:")
    click.echo("  " + shlex.join(["raftkv", "node", "...", "--listen-peer", moved["peerURL"]]))


@member.command(name="remove")
@connection_options
@click.argument("member_ref", metavar="MEMBER")
def member_remove(conn: Connection, member_ref: str) -> None:
    """Remove a member for good (its id is never used again); the last voter cannot be removed."""
    answer = _member_change(conn, "DELETE", member_ref)
    left = ", ".join(f"{m['name']} ({m['role']})" for m in answer["members"])
    click.echo(f"removed {answer['removed']} from the cluster; members now: {left}")


def _member_change(conn: Connection, method: str, member_ref: str, action: str = "", body: Any = None) -> Any:
    """A change to one member, named by id or name (a name is looked up in GET /members first)."""

    async def go() -> tuple[int, Any]:
        async with conn.client(timeout_s=MEMBER_CHANGE_TIMEOUT_S) as c:
            status, view = await c.request("GET", "/members")
            members = view["members"] if status == 200 and isinstance(view, dict) else []
            ids = {m["id"] for m in members}
            by_name = {m["name"]: m["id"] for m in members}
            member_id = member_ref if member_ref in ids else by_name.get(member_ref, member_ref)
            return await c.request(method, f"/members/{quote(member_id, safe='')}{action}", body)

    return run(go)


# ---------------------------------------------------------------------- the local lab -----------------


def dashboard_option(fn: Any) -> Any:
    return click.option(
        "--dashboard",
        default=lambda: os.environ.get("RAFTKV_DASHBOARD", DEFAULT_DASHBOARD),
        show_default="RAFTKV_DASHBOARD or " + DEFAULT_DASHBOARD,
        help="The dashboard of the `raftkv up` whose nodes to control.",
    )(fn)


def _lab_call(dashboard: str, method: str, path: str, body: Any = None, timeout_s: float = LAB_TIMEOUT_S) -> Any:
    url = endpoint_url(dashboard)
    return call(Connection([url]), method, path, body, timeout_s=timeout_s,
                 unreachable=f"no `raftkv up` answers at {url} (start one, or give its --dashboard URL)")


@main.group()
def lab() -> None:
    """The node processes of a running `raftkv up`, from another terminal.

    It asks the dashboard that `raftkv up` serves (GET /api/state, POST /api/nodes/NODE/ACTION,
    POST /api/members, DELETE /api/members/NODE), which carries the action out and prints it in
    the `up` terminal."""


@lab.command(name="list")
@dashboard_option
def lab_list(dashboard: str) -> None:
    """Each node: its process (running, paused, or how it exited), restarts, role and term."""
    state = _lab_call(dashboard, "GET", "/api/state")
    if not state.get("supervisor"):
        raise click.ClickException(
            f"the dashboard at {endpoint_url(dashboard)} watches a cluster it did not start (`raftkv dashboard`): "
            "it runs no node processes"
        )
    rows = []
    for node in (n for n in state["nodes"] if not n["removed"]):  # a removed member is on the page a while longer
        reach = state["reach"][node["id"]]
        process = reach["process"] or {}
        status = (node["status"] or {}) if reach["reach"] == "ok" else {}  # a dead node's last status is old
        rows.append([node["id"], node["url"], _process_words(process), str(process.get("restarts", "-")),
                     _role_words(status, reach["reach"]), _cell(status.get("term"))])
    echo_table(["NODE", "URL", "PROCESS", "RESTARTS", "ROLE", "TERM"], rows)


def _role_words(status: dict, reach: str) -> str:
    """A node's role as `lab list` shows it: a learner says so (its Raft role is follower)."""
    if status.get("nodeId") in (status.get("learners") or ()):
        return "learner"
    return status.get("state", reach)


def _process_words(process: dict) -> str:
    if process.get("running"):
        return f"{'paused' if process['paused'] else 'running'} (pid {process['pid']})"
    return f"exited: {process['exit']}" if process.get("exit") else "not started"


LAB_ACTIONS = {
    "start": "Start NODE again: it recovers from its data directory.",
    "stop": "Stop NODE: SIGTERM, then kill -9 if it has not exited within 10 s.",
    "restart": "Restart NODE: kill -9 if it runs, then start it from its data directory.",
    "crash": "Crash NODE: kill -9, no chance to flush anything.",
    "pause": "Pause NODE (SIGSTOP): it stays in memory and says nothing.",
    "resume": "Resume a paused NODE (SIGCONT).",
}


def _lab_action(action: str, help_text: str) -> click.Command:
    @dashboard_option
    @click.argument("node")
    def act(dashboard: str, node: str) -> None:
        answer = _lab_call(dashboard, "POST", f"/api/nodes/{quote(node, safe='')}/{action}")
        click.echo(f"{node}: {_process_words(answer['process'])}, restarts: {answer['process']['restarts']}")

    return click.command(name=action, help=help_text)(act)


for _action, _help in LAB_ACTIONS.items():
    lab.add_command(_lab_action(_action, _help))


@lab.command(name="add")
@dashboard_option
@click.argument("name", required=False)
@click.option("--learner", is_flag=True, help="Leave it a learner (default: promote it once it has caught up).")
def lab_add(dashboard: str, name: str | None, learner: bool) -> None:
    """Start a new node (NAME, default the next free nodeN) that joins the cluster as a learner and,
    once it has caught up, is promoted to voter."""
    answer = _lab_call(dashboard, "POST", "/api/members", {"name": name, "promote": not learner},
                       timeout_s=LAB_ADD_TIMEOUT_S)
    process = answer["process"]
    etcd = f", etcd API port {process['etcdPort']}" if process.get("etcdPort") else ""
    click.echo(f"{answer['node']} joined as a {answer['role']} (id {answer['id']}): {_process_words(process)}, "
               f"{process['url']}{etcd}, data: {process['dataDir']}")


@lab.command(name="promote")
@dashboard_option
@click.argument("node")
def lab_promote(dashboard: str, node: str) -> None:
    """Make the learner NODE a voter."""
    answer = _lab_call(dashboard, "POST", f"/api/members/{quote(node, safe='')}/promote")
    click.echo(f"{answer['node']} is a {answer['role']} now (id {answer['id']})")


@lab.command(name="remove")
@dashboard_option
@click.argument("node")
def lab_remove(dashboard: str, node: str) -> None:
    """Remove NODE from the cluster, then stop its process (its data directory is kept)."""
    answer = _lab_call(dashboard, "DELETE", f"/api/members/{quote(node, safe='')}")
    stopped = f"; its process stopped, its data stays in {answer['process']['dataDir']}" if answer["process"] else ""
    click.echo(f"{answer['node']} was removed from the cluster (id {answer['id']}){stopped}")


# ---------------------------------------------------------------------- backup and restore -----------

SNAPSHOT_READ_TIMEOUT_S = 120.0  # a node encodes a million keys in seconds before it sends a byte
SNAPSHOT_PROGRESS_MIN_BYTES = 8 << 20  # smaller backups come too fast for a progress bar to help


@main.group()
def snapshot() -> None:
    """Back up a live cluster to a file, and start a new cluster from one (as `etcdctl snapshot save`
    and `etcdutl snapshot restore`)."""


@snapshot.command(name="save")
@connection_options
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def snapshot_save(conn: Connection, file: Path) -> None:
    """Save every key, as of one revision, to FILE (written atomically: FILE is whole or untouched)."""
    from raftkv.node.backup import BackupError, install_backup_file, partial_path

    partial = partial_path(file)
    try:
        asyncio.run(_download_snapshot(conn, partial))
        header = install_backup_file(partial, file)
    except BackupError as e:
        raise click.ClickException(f"the backup received is not whole, nothing was saved: {e}") from None
    except OSError as e:
        raise click.ClickException(f"cannot write {file}: {e.strerror}; nothing was saved") from None
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"saved {file}: revision {header.revision}, {header.keys} keys, {_size(file.stat().st_size)}, "
               f"sha256 {header.sha256}")


async def _download_snapshot(conn: Connection, partial: Path) -> None:
    """GET /snapshot from the first endpoint that answers, streamed into `partial`."""
    import aiohttp
    from tqdm import tqdm

    failures = []
    timeout = aiohttp.ClientTimeout(sock_connect=5.0, sock_read=SNAPSHOT_READ_TIMEOUT_S)
    async with conn.access.session(timeout=timeout) as session:
        for base in conn.endpoints:
            try:
                async with session.get(base + "/snapshot") as resp:
                    if resp.status != 200:
                        said = UNAUTHENTICATED if resp.status == 401 else _error_of(await resp.text())
                        raise click.ClickException(f"{base} answered {resp.status}: {said}")
                    quiet = (resp.content_length or 0) < SNAPSHOT_PROGRESS_MIN_BYTES or not sys.stderr.isatty()
                    with open(partial, "wb") as f, tqdm(total=resp.content_length, unit="B", unit_scale=True,
                                                        desc="snapshot", file=sys.stderr, disable=quiet) as bar:
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            f.write(chunk)
                            bar.update(len(chunk))
                    return
            except (aiohttp.ClientError, TimeoutError) as e:
                failures.append(f"{base}: {type(e).__name__} {e}".strip())
    raise click.ClickException(f"no endpoint sent a snapshot: {'; '.join(failures)}")


def _error_of(text: str) -> str:
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text


@snapshot.command(name="restore")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--id", "node_id", required=True, help="This member's id (one of --cluster's).")
@click.option("--cluster", required=True, help="The NEW cluster's members, the same for every member: "
              "id@host:http_port:raft_port,...")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Default: data/<id>. It must not exist, or be empty.")
def snapshot_restore(file: Path, node_id: str, cluster: str, data_dir: Path | None) -> None:
    """Write the data directory of member --id of a new cluster holding exactly FILE's keys. Run
    it once per member, then start each with `raftkv node --id ID --cluster CLUSTER`."""
    from raftkv.node.backup import BackupError, restore_data_dir

    target = data_dir or Path("data") / node_id
    try:
        header = restore_data_dir(file, node_id, cluster, target)
    except ConfigError as e:
        raise click.UsageError(str(e)) from None
    except BackupError as e:
        raise click.ClickException(f"{e}; nothing was written") from None
    click.echo(f"restored {file} into {target} for {node_id}: revision {header.revision}, {header.keys} keys, "
               f"log index {header.applied_index}")
    click.echo(f"start it with: raftkv node --id {node_id} --cluster {cluster}"
               + (f" --data-dir {target}" if data_dir else ""))


@snapshot.command(name="status")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the whole header as JSON.")
def snapshot_status(file: Path, as_json: bool) -> None:
    """Verify FILE's checksums and say what it holds (exit 1 when it is damaged)."""
    from raftkv.node.backup import BackupError, read_backup

    try:
        header = read_backup(file).header
    except BackupError as e:
        raise click.ClickException(str(e)) from None
    if as_json:
        click.echo(json.dumps(header.as_json()))
        return
    members = ", ".join(f"{member_id} ({m.client_url})" for member_id, m in sorted(header.members.items()))
    click.echo(f"revision {header.revision}, {header.keys} keys, log index {header.applied_index}, "
               f"{_size(file.stat().st_size)}, sha256 {header.sha256}")
    click.echo(f"taken by {header.taken_by} at {header.taken_at}; members: {members or '-'}")


main.add_command(dashboard_command, name="dashboard")
for _command in (watch, lease, lock, elect, auth, user, role):
    main.add_command(_command)
