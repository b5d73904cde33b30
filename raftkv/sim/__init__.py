"""Deterministic simulation of Raft cores: a virtual clock, a faulty network, crashing disks.

`run_seed` runs one seeded cluster and checks the safety invariants after every step; `Harness`
drives a cluster by hand for scenario tests; `python -m raftkv.sim` runs thousands of seeds.
"""

from .harness import Harness
from .invariants import InvariantViolation, SafetyMonitor
from .network import LinkConditions, VirtualNetwork
from .replica import RegisterMachine, Replica
from .runner import Summary, run_many, summarise
from .simulation import LivenessViolation, SimConfig, SimResult, Simulation, run_seed

__all__ = [
    "Harness",
    "InvariantViolation",
    "LinkConditions",
    "LivenessViolation",
    "RegisterMachine",
    "Replica",
    "SafetyMonitor",
    "SimConfig",
    "SimResult",
    "Simulation",
    "Summary",
    "VirtualNetwork",
    "run_many",
    "run_seed",
    "summarise",
]
