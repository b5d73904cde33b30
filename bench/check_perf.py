"""`etcdctl check perf`, etcd's own load check, against any system that serves etcd's gRPC API.

The check is etcd's, unchanged: for 60 s, clients (50 for load "s", 200 for "m") write 1 KiB
values under random binary keys at a fixed rate (150 or 1,000 writes/s), then delete the prefix.
It passes if throughput is above 90% of the rate, the slowest write took at most 0.5 s and the
standard deviation is at most 0.1 s. Its verdict lines are parsed here, nothing else is measured.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from typing import Protocol

ETCDCTL_BIN = "etcdctl"
CHECK_S = 60  # the check's fixed duration
RATES = {"s": 150, "m": 1000, "l": 8000, "xl": 15000}  # writes/s the check offers at each load

_THROUGHPUT = re.compile(r"Throughput (?:is|too low:) (\d+) writes/s")
_SLOWEST = re.compile(r"Slowest request took(?: too long:)? ([\d.]+)s")
_STDDEV = re.compile(r"Stddev (?:is|too high:) ([\d.]+)s")
_ERRORS = re.compile(r"ERROR\((.*)\) -> (\d+)")


class EtcdApi(Protocol):
    name: str

    def grpc_targets(self) -> list[str]: ...


@dataclass
class CheckPerf:
    load: str
    throughput: int | None  # writes/s, as the check prints it
    slowest_s: float | None
    stddev_s: float | None
    errors: int  # failed writes the check counted
    passed: bool
    tail: str  # the output's last lines, for the notes when nothing parsed

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"


def parse(load: str, returncode: int, output: str) -> CheckPerf:
    def number(pattern: re.Pattern[str], kind: type) -> int | float | None:
        found = pattern.search(output)
        return kind(found.group(1)) if found else None

    errors = sum(int(m.group(2)) for m in _ERRORS.finditer(output))
    lines = output.strip().splitlines()
    passed = returncode == 0 and bool(lines) and lines[-1] == "PASS"
    return CheckPerf(load, number(_THROUGHPUT, int), number(_SLOWEST, float), number(_STDDEV, float), errors,
                     passed, "\n".join(lines[-5:]))


def run_check_perf(system: EtcdApi, load: str) -> CheckPerf:
    """One `etcdctl check perf --load <load>` against every live member of `system`."""
    assert load in RATES, load
    args = [ETCDCTL_BIN, "--endpoints", ",".join(system.grpc_targets()), "check", "perf", "--load", load]
    done = subprocess.run(args, capture_output=True, text=True, timeout=CHECK_S * 3,
                          env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    # The progress bar goes to stdout too, on lines of its own ending in carriage returns.
    return parse(load, done.returncode, done.stdout + done.stderr)
