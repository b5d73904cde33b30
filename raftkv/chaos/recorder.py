"""Everything a chaos run observes, on one clock: client operations, faults, and Raft states.

Theory of operation
-------------------
The judge can only be as good as the record. A `Recorder` owns one monotonic clock (seconds
since the run started) shared by every client, the nemesis and the state observer, so the
intervals of operations, the windows of faults and the samples of `/raft-state` line up.

* operations are `raftkv.check.Operation`s (the checker's format), appended when they complete,
  with their invocation time taken before the request left; alongside each one, `op_meta` keeps
  what the checker does not need but a person does (which node, the HTTP status or the etcd
  clients' gRPC status, the error);
* faults are `FaultRecord`s: what was done to whom, from when to when (end None = never healed,
  which the runner never allows: it heals everything before the final reads);
* `StateSample`s are kept only when a node's (state, term, leader) changes, so a long run stays
  small while every leadership change is seen (subject to the polling interval).

The recorder is plain data plus `to_json()`; it does no I/O, so tests can fill it by hand.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from raftkv.check import Operation

__all__ = ["REMOVED_STATE", "FaultRecord", "Recorder", "StateSample", "answer_of"]

REMOVED_STATE = "removed"  # a node's state once it left the configuration (it is polled no more)


def answer_of(meta: dict[str, Any]) -> str:
    """What an operation was answered, from its meta: "HTTP 503", "gRPC UNAVAILABLE" (the etcd
    clients'), or "no connection"."""
    if meta.get("status"):
        return f"HTTP {meta['status']}"
    return f"gRPC {meta['grpc']}" if meta.get("grpc") else "no connection"


@dataclass
class FaultRecord:
    kind: str  # "kill", "pause", "partition", "netns", "crash", "member"
    label: str  # what a person reads: "kill -9 node2 (leader)", "netns bridge via node3"
    targets: list[str]
    start: float
    end: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # the fault could not be (fully) injected


@dataclass(frozen=True)
class StateSample:
    time: float
    node: str
    state: str | None  # None: the node did not answer; REMOVED_STATE: it is no longer a member
    term: int | None
    leader: str | None
    commit_index: int | None = None
    last_applied: int | None = None


class Recorder:
    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.started_at_unix = time.time()
        self.ops: list[Operation] = []
        self.op_meta: list[dict[str, Any]] = []
        self.faults: list[FaultRecord] = []
        self.samples: list[StateSample] = []
        self.phases: dict[str, float] = {}  # "workload_end", "healed", "final_reads" -> time
        self._last_sample: dict[str, tuple] = {}

    def now(self) -> float:
        return round(time.monotonic() - self._t0, 6)

    def record(self, op: Operation, **meta: Any) -> None:
        self.ops.append(op)
        self.op_meta.append(meta)

    def fault_started(self, kind: str, label: str, targets: list[str], **details: Any) -> FaultRecord:
        record = FaultRecord(kind, label, list(targets), self.now(), details=dict(details))
        self.faults.append(record)
        return record

    def fault_ended(self, record: FaultRecord) -> None:
        if record.end is None:
            record.end = self.now()

    def sample(self, s: StateSample) -> None:
        key = (s.state, s.term, s.leader)
        if self._last_sample.get(s.node) != key:
            self._last_sample[s.node] = key
            self.samples.append(s)

    def mark(self, phase: str) -> None:
        self.phases[phase] = self.now()

    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "fail": 0, "unknown": 0}
        for op in self.ops:
            out[op.outcome] += 1
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recorder:
        """The inverse of `to_json` (for re-judging or re-drawing a saved run)."""
        r = cls()
        r.started_at_unix = data.get("startedAtUnix", 0.0)
        for item in data["operations"]:
            item = dict(item)
            meta = item.pop("meta", {})
            r.record(Operation.from_dict(item), **meta)
        r.faults = [FaultRecord(**f) for f in data.get("faults", [])]
        r.samples = [StateSample(**s) for s in data.get("states", [])]
        r.phases = dict(data.get("phases", {}))
        return r

    def to_json(self) -> dict[str, Any]:
        return {
            "startedAtUnix": self.started_at_unix,
            "operations": [op.to_dict() | {"meta": meta} for op, meta in zip(self.ops, self.op_meta, strict=True)],
            "faults": [asdict(f) for f in self.faults],
            "states": [asdict(s) for s in self.samples],
            "phases": dict(self.phases),
        }
