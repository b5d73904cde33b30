"""How every part of a chaos run reaches the nodes: one `Access` (TLS, credentials) for the run.

The clients, the observer, the nemesis and the judges each open sessions of their own, in tasks
the runner starts. The runner sets the run's Access once (`RUN_ACCESS`, from `raftkv chaos
--cacert ... --user ...`, for a cluster it attaches to), and every task it starts afterwards
inherits it, as tasks inherit context variables: none of them passes it along, and none can open
a session without it.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import aiohttp

from raftkv.client import NO_ACCESS, Access, Client

__all__ = ["RUN_ACCESS", "run_client", "run_session"]

RUN_ACCESS: ContextVar[Access] = ContextVar("chaos_run_access", default=NO_ACCESS)


def run_session(**kwargs: Any) -> aiohttp.ClientSession:
    """A session that sends each request once, with the run's TLS and credentials; a `connector`
    of one's own should come from `RUN_ACCESS.get().connector(...)`."""
    return RUN_ACCESS.get().session(**kwargs)


def run_client(endpoints: list[str], timeout_s: float) -> Client:
    return Client(endpoints, timeout_s=timeout_s, access=RUN_ACCESS.get())
