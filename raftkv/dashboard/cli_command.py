"""`raftkv dashboard --endpoints ...`: the dashboard attached to any running cluster.

Without a supervisor it cannot crash, pause or restart nodes, nor start new ones; the page says
so next to those buttons. The lab's tools (hold-and-step, slow motion, partitions) need the nodes
to have fault injection on (`raftkv node --enable-fault-injection`). Register with
`main.add_command(dashboard)` in raftkv/cli.py.
"""

from __future__ import annotations

import click

from raftkv.cli_support import Connection, connection_options
from raftkv.node.config import MAX_PORT
from raftkv.ports import (
    OPEN_TO_NETWORK,
    WILDCARD_HOSTS,
    Listener,
    PortUnavailableError,
    check_listeners,
    reachable_urls,
)


@click.command(name="dashboard")
@connection_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the dashboard listens on.")
@click.option("--port", type=click.IntRange(1, MAX_PORT), default=8080, show_default=True)
def dashboard(conn: Connection, host: str, port: int) -> None:
    """Serve the live dashboard for a running cluster, until Ctrl-C. The connection options are
    how the dashboard reaches the nodes (the page itself is served over plain HTTP). With auth on,
    --user or --token is whom it watches as (it needs read access to every key); a person at the
    page logs in, and what they do reaches the nodes as them, never as that user."""
    from .server import run_dashboard

    urls = conn.endpoints
    if not urls:
        raise click.UsageError("--endpoints: give at least one node URL")
    try:
        check_listeners([Listener(host, port, "the dashboard")])
    except PortUnavailableError as e:
        raise click.ClickException(f"{e}; the dashboard was not started") from None
    click.echo(f"dashboard: {', '.join(reachable_urls(host, port))}  (watching {', '.join(urls)}; no supervisor: "
               "crash/pause/restart and slow motion are unavailable)")
    if host in WILDCARD_HOSTS:
        click.echo(OPEN_TO_NETWORK.format(what="its controls (partition the nodes, force elections, write keys)"))
    run_dashboard(host, port, urls, None, access=conn.access)
