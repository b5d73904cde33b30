"""Checkers for client histories recorded by the simulator and the chaos tools."""

from raftkv.check.history import (
    Operation,
    history_from_json,
    history_to_json,
    load_history,
    save_history,
)
from raftkv.check.linearizability import CheckResult, KeyResult, Verdict, check_history

__all__ = [
    "CheckResult",
    "KeyResult",
    "Operation",
    "Verdict",
    "check_history",
    "history_from_json",
    "history_to_json",
    "load_history",
    "save_history",
]
