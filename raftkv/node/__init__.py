"""A raftkv node without its HTTP face: one Raft group driven with real time, and the process
around it.

`RaftGroup` (group.py) drives a pure core with a storage and a transport it is given; where its
writes and reads wait is proposals.py and reads.py, how Readys reach the disk persist.py, what it
reports observe.py and status.py. `NodeHost` (host.py) is the process's Raft side: the TCP
transport with its fault layer, metrics and the Raft event stream; it is what the HTTP API serves
and what an embedding program uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raftkv.node.config import ConfigError, Member, NodeConfig
    from raftkv.node.errors import NodeError, NoLeaderError, NotAppliedError, OutcomeUnknownError
    from raftkv.node.group import RaftGroup
    from raftkv.node.host import NodeHost
    from raftkv.node.proposals import FORWARDED_TO

# Loaded on first use (PEP 562), so that importing a light module of this package (config.py, for
# a CLI command that only talks to a cluster) does not load the whole node: aiohttp's server,
# Prometheus, OpenTelemetry.
_HOME = {"ConfigError": "config", "Member": "config", "NodeConfig": "config", "NodeError": "errors",
         "NoLeaderError": "errors", "NotAppliedError": "errors", "OutcomeUnknownError": "errors",
         "RaftGroup": "group", "NodeHost": "host", "FORWARDED_TO": "proposals"}


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)


__all__ = [
    "FORWARDED_TO",
    "ConfigError",
    "Member",
    "NoLeaderError",
    "NodeConfig",
    "NodeError",
    "NodeHost",
    "NotAppliedError",
    "OutcomeUnknownError",
    "RaftGroup",
]
