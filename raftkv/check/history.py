"""Client histories: what each client asked, when, and what it learned.

A history is a list of `Operation`s, one per client request, recorded from the outside of the
system (the simulator's fake clients, or the chaos tool's real HTTP clients). Each operation is an
interval `[invoke_time, complete_time]` on one clock shared by all clients, plus what the client
saw. The checker in `linearizability.py` asks whether every operation can be given one instant
inside its interval so that the instants, in order, replay a single-copy key-value store.

Outcomes are the client's knowledge, not the server's:

- "ok": the request completed and its result is known.
- "fail": the request definitely had no effect (503 before proposing, 412 with nothing written).
  The checker drops such operations. A CAS whose precondition failed is *not* a "fail": it read
  the current value, so record it as outcome "ok" with result False.
- "unknown": the reply was lost or timed out (504, connection reset). The operation may have
  taken effect at any instant after its invocation, or never. `complete_time`, when present, is
  only when the client gave up; the checker treats the end of the interval as +infinity.

Results by kind: "read" -> the value seen (None = absent); "write" -> ignored; "cas" -> True if it
swapped, False if the current value was not `expected`; "delete" -> None if not recorded, True if a
value was deleted, False if the key was already absent (HTTP 404). Values are any JSON value; two
values are equal when their canonical JSON is equal.

On disk a history is a JSON array of objects with the field names of `Operation`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

OpKind = Literal["read", "write", "delete", "cas"]
Outcome = Literal["ok", "fail", "unknown"]

KINDS: frozenset[str] = frozenset({"read", "write", "delete", "cas"})
OUTCOMES: frozenset[str] = frozenset({"ok", "fail", "unknown"})


@dataclass(frozen=True)
class Operation:
    """One client request on one key. Values may be dicts or lists, so do not hash these."""

    client: str | int
    kind: OpKind
    key: str
    invoke_time: float
    complete_time: float | None
    outcome: Outcome = "ok"
    value: Any = None  # new value for "write" and "cas"
    expected: Any = None  # "cas" only: the value that must be current; None = key must be absent
    result: Any = None

    def __post_init__(self) -> None:
        # Reject malformed records at the boundary so the checker can trust every field.
        if self.kind not in KINDS:
            raise ValueError(f"unknown operation kind {self.kind!r}")
        if self.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {self.outcome!r}")
        if self.outcome == "ok" and self.complete_time is None:
            raise ValueError("an 'ok' operation needs a complete_time")
        if self.complete_time is not None and self.complete_time < self.invoke_time:
            raise ValueError(f"operation completes ({self.complete_time}) before it is invoked ({self.invoke_time})")
        if self.kind == "cas" and self.outcome == "ok" and not isinstance(self.result, bool):
            raise ValueError("a completed cas needs result True or False")
        if self.kind == "delete" and self.result not in (None, True, False):
            raise ValueError("a delete's result is None, True (deleted) or False (was absent)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Operation:
        known = {f.name for f in fields(cls)}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown operation fields: {sorted(extra)}")
        return cls(**data)

    def describe(self) -> str:
        """One line for humans: who did what, what came back, and when."""
        if self.kind == "read":
            what = f"read -> {_show(self.result)}"
        elif self.kind == "write":
            what = f"write {_show(self.value)}"
        elif self.kind == "delete":
            what = "delete" + ("" if self.result is None else f" -> {self.result}")
        else:
            what = f"cas {_show(self.expected)} -> {_show(self.value)}: {self.result}"
        end = "inf" if self.complete_time is None or self.outcome == "unknown" else _time(self.complete_time)
        status = "" if self.outcome == "ok" else f" ({self.outcome})"
        return f"client {self.client} {what}{status} [{_time(self.invoke_time)}, {end}]"


def _time(t: float) -> str:
    # Fixed point, so epoch timestamps stay readable (":g" would print 1.71e+09).
    return f"{t:.6f}".rstrip("0").rstrip(".")


def canonical_json(value: Any) -> str:
    """One text per JSON value (keys sorted): for comparing values, and for showing them."""
    return json.dumps(value, sort_keys=True)


def _show(value: Any) -> str:
    return "absent" if value is None else canonical_json(value)


def history_to_json(ops: Iterable[Operation]) -> str:
    return json.dumps([op.to_dict() for op in ops], indent=1, sort_keys=True)


def history_from_json(text: str) -> list[Operation]:
    data = json.loads(text)
    if not isinstance(data, list):
        raise ValueError("a history is a JSON array of operations")
    return [Operation.from_dict(item) for item in data]


def save_history(path: str | os.PathLike[str], ops: Iterable[Operation]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(history_to_json(ops))


def load_history(path: str | os.PathLike[str]) -> list[Operation]:
    with open(path, encoding="utf-8") as f:
        return history_from_json(f.read())
