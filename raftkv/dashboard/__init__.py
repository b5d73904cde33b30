"""The live dashboard: a separate process that watches every node and lets a person break the cluster.

`run_dashboard(host, port, node_urls, supervisor)` serves the page; see `server.py`.
"""

from __future__ import annotations

__all__ = ["run_dashboard"]


def run_dashboard(*args, **kwargs):  # type: ignore[no-untyped-def]
    from .server import run_dashboard as run

    return run(*args, **kwargs)
