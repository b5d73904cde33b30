"""Trace events: the one way the outside world watches a core.

The core calls an injected listener with a `TraceEvent` for every role change, vote, message,
append, truncation, commit, snapshot and membership change. The dashboard, the metrics and the
simulator's replay read only these (and the Ready batches), never the core's attributes, so the
core's internals stay free to change. With no listener the core skips building events at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class TraceEvent:
    kind: str  # role, campaign, vote, send, receive, append, truncate, commit, snapshot, conf, ...
    node: str
    term: int
    detail: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        """One line in plain words, for an event feed."""
        d = self.detail
        words = {
            "role": lambda: f"{self.node} became {d['role']} in term {self.term}",
            "campaign": lambda: (
                f"{self.node} timed out in term {self.term} and asked for "
                f"{'pre-votes' if d.get('pre_vote') else 'votes'}"
                + (" (leadership transfer)" if d.get("transfer") else "")
            ),
            "vote": lambda: (
                f"{self.node} {'granted' if d['granted'] else 'refused'} its "
                f"{'pre-vote' if d.get('pre_vote') else 'vote'} to {d['candidate']} for term {d['for_term']}"
                + (f" ({d['reason']})" if d.get("reason") else "")
            ),
            "commit": lambda: f"{self.node} committed up to index {d['index']}",
            "truncate": lambda: f"{self.node} dropped its conflicting entries from index {d['from_index']}",
            "snapshot": lambda: f"{self.node} {d['action']} a snapshot at index {d['index']}",
            "conf": lambda: f"{self.node} now has voters {d['voters']} and learners {d['learners']}",
            "step_down": lambda: f"{self.node} stepped down: {d['reason']}",
            "transfer": lambda: f"{self.node} hands leadership to {d['target']}",
        }.get(self.kind)
        return words() if words else f"{self.node} {self.kind} {d}"


Listener = Callable[[TraceEvent], None]
