"""Jepsen-style chaos testing of real raftkv clusters: real processes, real faults, judged history.

Modules, one job each (data flows top to bottom):

    netns.py        a lab of network namespaces + bridge; nftables cuts, one-way drops, loss
    clusters.py     the clusters a run acts on: loopback processes, processes in a lab, attached
    workload.py     concurrent clients (read / write / CAS on a few keys, random nodes) -> history
    etcd_clients.py the same clients through each node's etcd gRPC API (--workload etcd)
    coordination.py with --workload watch,lease,lock: starts, settles and judges the three below
    watchers.py     watch streams of the run's prefix; judged for order, gaps, duplicates, uncommitted events
    leases.py       a lease client (kept alive, revoked, lapsed, renewed late); judged for early expiry
    locks.py        lock clients with fencing tokens and a fenced resource; judged for tokens and overlap
    histories.py    every key's history on every final member: what the three are judged against
    membership.py   follows GET /members: the members of the moment, for clients, observer, final reads
    observer.py     polls /raft-state: leaders and terms over time, "who leads now"
    nemesis.py      seeded fault schedule; kill -9, SIGSTOP, /simulate-partition, nft cuts; heal
    member_nemesis.py  remove a member and stop it; add its name back as a new member, promote it
    recorder.py     the shared clock and everything observed
    judge.py        linearizability per key, lost acknowledged writes, divergence, election safety
    report.py       history.json, run.json, timeline.html
    runner.py       one run from cluster start to verdict (and `run_in_lab` for netns)
    worker.py       the run as a child process inside the lab's client namespace
    cli_command.py  the `raftkv chaos` click command

Running it (as `raftkv chaos`, or `python -m raftkv.chaos`):

    raftkv chaos --duration 20                        # 3 local nodes; kill, pause, partition
    raftkv chaos --nemesis kill,pause,partition,netns --nodes 5 --duration 600 --seed 7
                                                      # a long run with real cuts (root, nftables)
    raftkv chaos --nemesis member,kill,pause,partition   # members leave and rejoin under the faults
    raftkv chaos --endpoints http://h1:3000,http://h2:3000,http://h3:3000 --nemesis partition
    raftkv chaos --workload kv,watch,lease,lock       # watches, leases and locks judged too
    raftkv chaos --workload etcd                      # the clients through etcd's gRPC API
    raftkv chaos --recheck chaos-out                  # judge a saved run again, redraw its timeline

Exit code 0 pass, 1 violation, 3 inconclusive, 4 could not run. The same --seed replays the same
fault schedule and client choices (timing, and so the exact history, cannot be replayed).
"""

from raftkv.chaos.judge import Judgement, judge
from raftkv.chaos.nemesis import KINDS, FaultPlan, Nemesis, plan_schedule
from raftkv.chaos.netns import Lab, LabUnavailable, NetState, lab_unavailable_reason
from raftkv.chaos.recorder import FaultRecord, Recorder, StateSample
from raftkv.chaos.runner import ChaosError, ChaosOptions, run, run_in_lab

__all__ = [
    "KINDS",
    "ChaosError",
    "ChaosOptions",
    "FaultPlan",
    "FaultRecord",
    "Judgement",
    "Lab",
    "LabUnavailable",
    "Nemesis",
    "NetState",
    "Recorder",
    "StateSample",
    "judge",
    "lab_unavailable_reason",
    "plan_schedule",
    "run",
    "run_in_lab",
]
