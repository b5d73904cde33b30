"""The chaos judges of watches, leases and locks: hand-made histories that each break one promise
(a gap, a duplicate, an event that never committed, an early expiry, a token that does not
increase, two holders at once) must be reported, and a correct one must pass; then `raftkv chaos`
with every workload, attached twice to one cluster, must pass (test_chaos.py runs every workload
under every fault).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cluster import LocalCluster

from raftkv.chaos.coordination import judge_coordination
from raftkv.chaos.histories import NodeHistories
from raftkv.chaos.leases import judge_leases
from raftkv.chaos.locks import judge_locks
from raftkv.chaos.watchers import first_seen, judge_watches
from raftkv.client import Client
from raftkv.concurrency import Session

PREFIX = "p/"


def kv(key: str, value: Any, created: int, revision: int, version: int = 1, lease: int = 0) -> dict[str, Any]:
    shown = {"key": key, "value": value, "create_revision": created, "mod_revision": revision, "version": version}
    return shown | ({"lease": lease} if lease else {})


# What the cluster committed: revision -> {key: kv, or None for a delete}
COMMITTED: dict[int, dict[str, dict[str, Any] | None]] = {
    5: {"p/a": kv("p/a", 1, 5, 5)},
    6: {"p/b": kv("p/b", 2, 6, 6)},
    7: {"p/a": kv("p/a", 3, 5, 7, 2), "p/b": None},  # a txn: two keys in one revision
    8: {"p/c": kv("p/c", 4, 8, 8)},
}
FINAL = {"p/a": kv("p/a", 3, 5, 7, 2), "p/c": kv("p/c", 4, 8, 8)}


def histories(committed: dict[int, dict[str, Any]], nodes: tuple[str, ...] = ("n1", "n2", "n3")) -> NodeHistories:
    per_key: dict[str, list[dict[str, Any]]] = {}
    for revision, changes in sorted(committed.items()):
        for key, value in changes.items():
            per_key.setdefault(key, []).append({"revision": revision, "kv": value})
    return {n: {"compactRevision": 0, "keys": json.loads(json.dumps(per_key))} for n in nodes}


def stream(batches: list[tuple[int, dict[str, Any]]], watcher: int = 0, start: int = 5) -> dict[str, Any]:
    """A watcher's record: each batch received one tenth of a second after the one before."""
    return {"watcher": watcher, "start_revision": start, "endpoints": [], "error": None,
            "batches": [[rev, 1.0 + i / 10, [["put" if v else "delete", k, v] for k, v in changes.items()]]
                        for i, (rev, changes) in enumerate(batches)]}


def faithful() -> list[tuple[int, dict[str, Any]]]:
    return sorted(COMMITTED.items())


def watch_findings(batches: list[tuple[int, dict[str, Any]]]) -> list[str]:
    check = judge_watches([stream(batches)], PREFIX, {}, FINAL, histories(COMMITTED))
    assert not check.inconclusive, check.inconclusive
    return check.violations


def test_watch_judge_passes_a_faithful_stream() -> None:
    assert watch_findings(faithful()) == []


def test_watch_judge_reports_a_gap() -> None:
    found = watch_findings([b for b in faithful() if b[0] != 6])
    assert any("gap" in f and "6" in f for f in found), found


def test_watch_judge_reports_a_duplicate_and_an_out_of_order_revision() -> None:
    batches = faithful()
    found = watch_findings([*batches[:2], batches[1], *batches[2:]])
    assert any("duplicate: revision 6" in f for f in found), found
    found = watch_findings([batches[0], batches[2], batches[1], batches[3]])
    assert any("out of order: revision 6" in f for f in found), found


def test_watch_judge_reports_an_event_that_never_committed() -> None:
    uncommitted = (9, {"p/z": kv("p/z", 99, 9, 9)})  # e.g. a deposed leader's write
    found = watch_findings([*faithful(), uncommitted])
    assert any("uncommitted" in f and "p/z" in f for f in found), found
    changed = [(r, {"p/c": kv("p/c", 5, 8, 8)} if r == 8 else c) for r, c in faithful()]  # another value
    found = watch_findings(changed)
    assert any("uncommitted" in f and "revision 8" in f for f in found), found


def test_watch_judge_reports_a_partial_revision_and_a_final_state_it_does_not_reach() -> None:
    partial = [(r, {"p/a": c["p/a"]} if r == 7 else c) for r, c in faithful()]
    found = watch_findings(partial)
    assert any("incomplete revision" in f and "p/b" in f for f in found), found
    assert any("final state" in f for f in found), found


def test_watch_judge_reports_replicas_whose_histories_differ() -> None:
    differ = histories(COMMITTED)
    differ["n2"]["keys"]["p/c"][0]["revision"] = 9
    check = judge_watches([stream(faithful())], PREFIX, {}, FINAL, differ)
    assert any("replicas' histories of p/c differ" in v for v in check.violations), check.violations


def test_watch_judge_says_when_a_watcher_did_not_get_to_the_end() -> None:
    check = judge_watches([stream(faithful()[:2])], PREFIX, {}, FINAL, histories(COMMITTED))
    assert check.violations == []
    assert any("reached revision 6 only" in x for x in check.inconclusive), check.inconclusive


def test_first_seen_is_the_earliest_receipt_of_a_revision_or_a_later_one() -> None:
    slow, fast = stream(faithful()), stream(faithful()[2:], watcher=1)
    fast["batches"][0][1] = 0.5  # revision 7 reached watcher 1 first: 5 and 6 had committed by then too
    assert first_seen([slow, fast]) == [(5, 0.5), (6, 0.5), (7, 0.5), (8, 1.1)]


# ---- leases ---------------------------------------------------------------------------------------

LEASE = 77


def lease_record(keepalives: list[list[Any]], plan: str = "keep", revoke: list[Any] | None = None) -> dict[str, Any]:
    return {"id": LEASE, "ttl": 2, "plan": plan, "grant": [0.0, 0.1, 200],
            "keys": [["p/l/0", 0.1, 0.2, 200], ["p/l/1", 0.2, 0.3, 200]], "keepalives": keepalives, "revoke": revoke}


LEASE_COMMITTED = {
    3: {"p/l/0": kv("p/l/0", LEASE, 3, 3, lease=LEASE)},
    4: {"p/l/1": kv("p/l/1", LEASE, 4, 4, lease=LEASE)},
    10: {"p/l/0": None, "p/l/1": None},  # the lease's end: both keys in one revision
}


def lease_findings(record: dict[str, Any], seen_at: float, committed: NodeHistories | None = None) -> list[str]:
    """The lease judge's violations when revision 10 was first received by a watcher at `seen_at`."""
    check = judge_leases([record], committed or histories(LEASE_COMMITTED), [(10, seen_at)], [])
    assert not check.inconclusive, check.inconclusive
    return check.violations


def test_lease_judge_passes_an_expiry_after_the_last_acknowledged_keepalive_ran_out() -> None:
    assert lease_findings(lease_record([[1.0, 1.1, 200], [1.7, 1.8, 200]]), seen_at=3.8) == []


def test_lease_judge_reports_an_expiry_while_an_acknowledged_keepalive_covered_the_lease() -> None:
    found = lease_findings(lease_record([[1.0, 1.1, 200], [1.7, 1.8, 200]]), seen_at=3.5)  # 1.7 + 2 = 3.7
    assert len(found) == 1 and "renewed by a request sent at 1.700s" in found[0], found
    # The grant itself promises a TTL too.
    assert any("granted" in f for f in lease_findings(lease_record([], plan="lapse"), seen_at=1.5))
    # A keep-alive the cluster did not acknowledge promises nothing.
    assert lease_findings(lease_record([[1.7, 4.8, 504]]), seen_at=2.5) == []


def test_lease_judge_lets_a_revocation_end_the_lease_early() -> None:
    assert lease_findings(lease_record([[1.0, 1.1, 200]], plan="revoke", revoke=[1.2, 1.3, 200]), seen_at=1.4) == []


def test_lease_judge_reports_keys_deleted_at_different_revisions() -> None:
    split = histories(LEASE_COMMITTED)
    split["n3"]["keys"]["p/l/1"][1]["revision"] = 11  # n3 deleted one key a revision later
    found = lease_findings(lease_record([]), seen_at=9.0, committed=split)
    assert any("not all deleted in one revision on every node" in f and "n3" in f for f in found), found
    kept = histories(LEASE_COMMITTED)
    del kept["n2"]["keys"]["p/l/0"][1]  # n2 never deleted it
    found = lease_findings(lease_record([]), seen_at=9.0, committed=kept)
    assert any("not all deleted" in f and "n2" in f for f in found), found


def test_lease_judge_is_inconclusive_about_a_lease_that_never_went() -> None:
    check = judge_leases([lease_record([])], histories(LEASE_COMMITTED), [], [LEASE])
    assert check.violations == [] and any("still exist" in x for x in check.inconclusive)


# ---- locks ----------------------------------------------------------------------------------------

def holding(client: int, token: int, acquired: float, ended: float, end: str = "released",
            fenced: bool | None = True) -> dict[str, Any]:
    return {"client": client, "asked_at": acquired - 0.5, "lease": token, "key": f"p/lock/{token:x}", "token": token,
            "acquired_at": acquired, "ended_at": ended, "end": end,
            "fenced": None if fenced is None else [acquired, acquired + 0.01, 200, fenced]}


def fence_history(tokens: list[int]) -> NodeHistories:
    return histories({100 + i: {"p/fence": kv("p/fence", t, 100, 100 + i, i + 1)} for i, t in enumerate([0, *tokens])})


def lock_findings(holdings: list[dict[str, Any]], fence_tokens: list[int]) -> list[str]:
    check = judge_locks(holdings, "p/fence", fence_history(fence_tokens))
    assert not check.inconclusive, check.inconclusive
    return check.violations


def test_lock_judge_passes_holders_one_after_another_with_growing_tokens() -> None:
    ok = [holding(0, 10, 1.0, 1.5), holding(1, 14, 1.6, 2.0), holding(2, 20, 2.1, 3.0, end="lost: lease gone")]
    assert lock_findings(ok, [10, 14, 20]) == []


def test_lock_judge_reports_a_token_that_does_not_increase() -> None:
    found = lock_findings([holding(0, 10, 1.0, 1.5), holding(1, 8, 1.6, 2.0, fenced=False)], [10])
    assert any("tokens not increasing" in f for f in found), found
    found = lock_findings([holding(0, 10, 1.0, 1.5), holding(1, 10, 1.6, 2.0, fenced=None)], [10])
    assert any("token 10 handed to more than one holding" in f for f in found), found


def test_lock_judge_reports_two_holders_at_once_but_not_a_void_holding() -> None:
    found = lock_findings([holding(0, 10, 1.0, 2.5, end="lost: no keep-alive"), holding(1, 14, 2.0, 3.0)], [10, 14])
    assert any("two holders at once for 0.500s" in f for f in found), found
    void = holding(0, 10, 1.0, 2.5, end="void: lease expired", fenced=None)  # never acted on
    assert lock_findings([void, holding(1, 14, 2.0, 3.0)], [14]) == []


def test_lock_judge_reports_a_fenced_resource_that_went_backwards_or_lost_a_write() -> None:
    holders = [holding(0, 10, 1.0, 1.5), holding(1, 14, 1.6, 2.0)]
    assert any("fenced write of token 10 landed after token 14" in f for f in lock_findings(holders, [14, 10]))
    assert any("not in p/fence's history" in f for f in lock_findings(holders, [10]))


def test_a_replica_still_catching_up_is_no_divergence() -> None:
    lagging = histories(COMMITTED)
    del lagging["n3"]["keys"]["p/c"][0]  # n3 has not applied revision 8 yet
    record = {"workloads": ["kv", "watch"], "prefix": PREFIX, "initial": {}, "final": FINAL,
              "histories": lagging, "streams": [stream(faithful())]}
    converged, catching_up = judge_coordination({**record, "converged": True}), judge_coordination(
        {**record, "converged": False})
    assert any("histories of p/c differ" in v for v in converged[0].violations), converged[0].violations
    assert catching_up[0].violations == [] and any("did not converge" in x for x in catching_up[0].inconclusive)


def test_coordination_record_without_watchers_is_not_judged() -> None:
    assert judge_coordination(None) == []
    assert judge_coordination({"workloads": ["kv"], "prefix": "chaos-"}) == []


# ---- a real run -------------------------------------------------------------------------------------

def test_a_session_knows_it_is_lost_one_ttl_after_its_last_acknowledged_keepalive(cluster: LocalCluster) -> None:
    """The lock judge ends a holding when its holder learned the session was lost; that is only
    what a careful holder knows if the session learns it at the TTL's end, not when a keep-alive
    stuck on a paused node finally times out (5 s later here)."""
    node = cluster.wait_for_leader()

    async def go() -> tuple[float, float, str]:
        async with Client([cluster.url(node)], timeout_s=5.0) as client, Session(client, 2) as session:
            await asyncio.sleep(0.8)  # one keep-alive acknowledged (every TTL/3)
            cluster.supervisor.pause(node)
            paused = time.monotonic()
            try:
                await asyncio.wait_for(session.lost.wait(), 10.0)
            finally:
                cluster.supervisor.resume(node)
            return paused, time.monotonic(), session.why

    paused, lost, why = asyncio.run(go())
    assert lost - paused <= 2.0 + 0.3, f"lost {lost - paused:.2f}s after the pause: {why}"


def test_chaos_attached_twice_to_the_same_cluster_with_every_workload(cluster: LocalCluster, tmp_path: Path) -> None:
    """--endpoints: a cluster this run did not start, holding an earlier run's keys, leases' keys
    long gone and the fence's last token: the second run must pass as the first."""
    endpoints = ",".join(cluster.urls.values())
    for run in ("first", "second"):
        out = tmp_path / run
        proc = subprocess.run(
            [sys.executable, "-m", "raftkv.chaos", "--endpoints", endpoints, "--out", str(out), "--no-progress",
             "--duration", "6", "--nemesis", "partition", "--workload", "kv,watch,lease,lock"],
            capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, f"{run} run:\n{proc.stdout}{proc.stderr}"
        assert "lease: ok" in proc.stdout and "lock: ok" in proc.stdout, proc.stdout
