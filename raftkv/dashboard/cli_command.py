"""`raftkv dashboard --endpoints ...`: the dashboard attached to any running cluster.

Without a supervisor it cannot crash, pause or restart nodes, nor slow their clocks; the page
says so next to those buttons. Register with `main.add_command(dashboard)` in raftkv/cli.py.
"""

from __future__ import annotations

import os

import click

DEFAULT_ENDPOINTS = "http://127.0.0.1:3000,http://127.0.0.1:3001,http://127.0.0.1:3002"


@click.command(name="dashboard")
@click.option(
    "--endpoints",
    default=lambda: os.environ.get("RAFTKV_ENDPOINTS", DEFAULT_ENDPOINTS),
    show_default="RAFTKV_ENDPOINTS or the local cluster",
    help="Comma-separated node URLs (each node's client HTTP address).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the dashboard listens on.")
@click.option("--port", type=int, default=8080, show_default=True)
def dashboard(endpoints: str, host: str, port: int) -> None:
    """Serve the live dashboard for a running cluster, until Ctrl-C."""
    from .server import run_dashboard

    urls = [u.strip() for u in endpoints.split(",") if u.strip()]
    if not urls:
        raise click.UsageError("--endpoints: give at least one node URL")
    click.echo(f"dashboard: http://{host}:{port}  (watching {', '.join(urls)}; no supervisor: crash/pause/restart "
               "and slow motion are unavailable)")
    run_dashboard(host, port, urls, None)
