"""One chaos run from start to verdict: cluster up, clients + nemesis + observer, heal, final
reads, judge, report.

Theory of operation
-------------------
    start (or attach to) the cluster; wait for a leader
    t=0 ........ clients and observer run; the nemesis follows its seeded schedule ........ t=duration
    stop clients (each finishes its request in flight), heal everything ("healed")
    wait for one leader and converged logs (bounded), final reads on every node ("final reads")
    judge the history; write history.json, run.json, timeline.html; stop what we started

Clients, observer and final reads address the members of the moment (`MemberView`, following
`GET /members`): with the member nemesis, nodes leave and come back under new ids, and the final
reads and digests are those of every member of the final configuration.

The key-value clients are raftkv's HTTP API's (`--workload kv`, workload.py), etcd's gRPC API's
(`--workload etcd`, etcd_clients.py: the nodes this run starts then serve it, `--listen-etcd`), or
both, each on keys of its own, in one history judged by one checker.

Everything that was started or broken is undone in `finally` blocks, also on errors and Ctrl-C.

Network namespaces: when the nemesis includes `netns`, the cluster must live in a lab and so
must the clients (traffic to lab addresses never leaves from the root namespace). `run_in_lab`
builds the lab in the calling process, then runs this whole module's `run()` as a child process
inside the lab's client namespace (`python -m raftkv.chaos.worker SPEC`), and destroys the lab
afterwards whatever happened. The child starts the nodes with `ip netns exec`, signals them
(same pid namespace) and changes the hub's nft rules with `ip netns exec <hub> nft`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from raftkv.chaos import etcd_clients
from raftkv.chaos.clusters import AttachedCluster, ChaosCluster, LocalCluster, NetnsCluster
from raftkv.chaos.connect import RUN_ACCESS, run_client, run_session
from raftkv.chaos.coordination import WORKLOADS, Coordination, judge_coordination
from raftkv.chaos.judge import Judgement, judge
from raftkv.chaos.membership import MemberView
from raftkv.chaos.nemesis import KINDS, Nemesis, plan_schedule
from raftkv.chaos.netns import Lab, lab_unavailable_reason, remove_stale_labs
from raftkv.chaos.observer import Observer
from raftkv.chaos.recorder import Recorder
from raftkv.chaos.report import write_report
from raftkv.chaos.workload import WorkloadConfig, call, final_reads, run_clients
from raftkv.client import NO_ACCESS, Access, Credentials
from raftkv.lab_ca import make_lab_certificates
from raftkv.supervisor import port_pick_range
from raftkv.tls import ClientTLS

__all__ = ["ChaosError", "ChaosOptions", "recheck", "run", "run_in_lab", "validate"]

STARTUP_TIMEOUT_S = 30.0
ATTACH_TIMEOUT_S = 10.0
EXIT_SETUP_FAILED = 4


class ChaosError(Exception):
    """The run could not be carried out (not a verdict about the cluster)."""


@dataclass(frozen=True)
class ChaosOptions:
    duration_s: float = 20.0
    clients: int = 5
    keys: int = 3
    nemesis: tuple[str, ...] = ("kill", "pause", "partition")
    seed: int = 0
    nodes: int = 3
    out_dir: str = "chaos-out"
    endpoints: tuple[str, ...] = ()
    node_args: tuple[str, ...] = ()
    op_timeout_s: float = 3.0
    recover_timeout_s: float = 30.0
    progress: bool = True
    lab_tag: str | None = None  # set by run_in_lab for the worker: the lab already built
    workload: tuple[str, ...] = ("kv",)  # of WORKLOADS: kv clients, watchers, a lease client, lock clients
    secure: bool = False  # the nodes this run starts serve TLS (a throwaway CA) and have auth on
    # How to reach an attached cluster (--endpoints; unused otherwise): TLS and credentials. Never
    # written anywhere (run.json, the netns worker's options): it may hold a password or a token.
    access: Access = field(default=NO_ACCESS, repr=False, compare=False)

    def as_dict(self) -> dict:
        """The options as JSON can hold them, less `access`."""
        return {name: value for name, value in asdict(self).items() if name != "access"}

    def to_json(self) -> str:
        return json.dumps(self.as_dict())

    @classmethod
    def from_json(cls, text: str) -> ChaosOptions:
        data = json.loads(text)
        for name in ("nemesis", "endpoints", "node_args", "workload"):
            data[name] = tuple(data[name])
        return cls(**data)

    @property
    def node_ids(self) -> list[str]:
        return [f"node{i + 1}" for i in range(self.nodes)]


def validate(opts: ChaosOptions) -> list[str]:
    """Why these options cannot run (empty when they can)."""
    problems = []
    unknown = set(opts.nemesis) - set(KINDS)
    if unknown:
        problems.append(f"unknown nemesis kind(s) {sorted(unknown)}; choose from {', '.join(KINDS)}")
    if opts.endpoints:
        unavailable = sorted({"kill", "pause", "netns", "crash", "member"} & set(opts.nemesis))
        if unavailable:
            problems.append(f"{', '.join(unavailable)} unavailable with --endpoints: they need node processes "
                            "this command starts itself (only `partition`, via /simulate-partition, works "
                            "on an attached cluster)")
        if opts.node_args:
            problems.append("--node-arg needs nodes this command starts; it cannot apply to --endpoints")
        if opts.secure:
            problems.append("--secure sets up nodes this command starts; an attached cluster's TLS and users are "
                            "given with --cacert ... --user")
    if opts.secure and "netns" in opts.nemesis:
        problems.append("--secure runs on loopback: it cannot be combined with the netns nemesis")
    if "netns" in opts.nemesis and not opts.lab_tag:
        reason = lab_unavailable_reason()
        if reason:
            problems.append(f"netns nemesis unavailable: {reason}")
    unknown_workloads = set(opts.workload) - set(WORKLOADS)
    if unknown_workloads or not opts.workload:
        problems.append(f"workload: choose one or more of {', '.join(WORKLOADS)} (got {', '.join(opts.workload)})")
    if opts.duration_s <= 0 or opts.clients < 1 or opts.keys < 1 or opts.nodes < 1:
        problems.append("duration, clients, keys and nodes must be positive")
    try:
        port_pick_range()  # where a run on loopback picks its nodes' ports
    except ValueError as e:
        problems.append(str(e))
    return problems


def run(opts: ChaosOptions) -> Judgement:
    """Run the whole thing in this process (the clients run in this network namespace)."""
    problems = validate(opts)
    if problems:
        raise ChaosError("; ".join(problems))
    return asyncio.run(_run(opts))


async def _attached_urls(endpoints: tuple[str, ...]) -> dict[str, str]:
    """{node id: URL}, asking each endpoint who it is (for a few seconds, in case it is starting)."""
    urls = {}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ATTACH_TIMEOUT_S
    async with run_session() as session:
        for ep in endpoints:
            ep = ep.rstrip("/")
            while True:
                status, data, error, _ = await call(session, "GET", f"{ep}/raft-state", None, 3.0)
                if status == 200 and isinstance(data, dict) and "nodeId" in data:
                    break
                if loop.time() > deadline:
                    raise ChaosError(f"{ep}/raft-state did not answer with a node id ({status} {error or data})")
                await asyncio.sleep(0.2)
            urls[data["nodeId"]] = ep
    return urls


def _make_cluster(opts: ChaosOptions, data_dir: Path) -> tuple[ChaosCluster, Lab | None]:
    etcd = "etcd" in opts.workload  # the etcd clients' nodes serve etcd's gRPC API too
    if opts.lab_tag:
        lab = Lab(opts.node_ids, tag=opts.lab_tag)  # built (and destroyed) by the parent: run_in_lab
        return NetnsCluster(lab, data_dir, list(opts.node_args), etcd=etcd), lab
    if opts.secure:
        certificates = make_lab_certificates(data_dir / "tls")
        RUN_ACCESS.set(Access(ClientTLS(certificates.ca)))
        node_args = [*opts.node_args, *certificates.node_args()]
        return LocalCluster(data_dir, opts.nodes, node_args, client_tls=True, etcd=etcd), None
    return LocalCluster(data_dir, opts.nodes, list(opts.node_args), etcd=etcd), None


async def _turn_auth_on(urls: list[str]) -> Access:
    """Add a root user with a fresh random password and enable auth; the run's Access as root."""
    password = secrets.token_urlsafe(16)
    async with run_client(urls, timeout_s=10.0) as client:
        for method, path, body in (("PUT", "/auth/users/root", {"password": password}),
                                   ("POST", "/auth/enable", None)):
            status, answer = await client.request(method, path, body)
            if status != 200:
                raise ChaosError(f"could not turn auth on ({method} {path}: {status} {answer})")
    return Access(RUN_ACCESS.get().tls, Credentials("root", password))


async def _run(opts: ChaosOptions) -> Judgement:
    # For every session of the run, in the tasks started from here (connect.py): an attached
    # cluster's access as given; the nodes this command starts serve plain HTTP with no users,
    # or with --secure TLS under the run's own CA and auth on (set below, once they are up).
    RUN_ACCESS.set(opts.access if opts.endpoints else NO_ACCESS)
    out_dir = Path(opts.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if opts.endpoints:
        cluster: ChaosCluster = AttachedCluster(await _attached_urls(opts.endpoints))
        lab = None
    else:
        # The nodes' data is this run's own: a previous run's log under the same --out would be
        # another cluster's history.
        shutil.rmtree(out_dir / "data", ignore_errors=True)
        cluster, lab = _make_cluster(opts, out_dir / "data")

    def say(msg: str) -> None:
        tqdm.write(msg, file=sys.stderr)  # above the progress bar when there is one

    nemesis: Nemesis | None = None
    try:
        cluster.start_all()
        probe = Observer(lambda: cluster.urls, Recorder())
        stable, view = await probe.wait_stable(STARTUP_TIMEOUT_S)
        if not stable:
            raise ChaosError(f"the cluster did not start: {view}")
        say(f"chaos: cluster up ({view}); nodes: " + ", ".join(f"{n}={u}" for n, u in sorted(cluster.urls.items())))
        if opts.secure:
            RUN_ACCESS.set(await _turn_auth_on(list(cluster.urls.values())))
            say("chaos: auth enabled; every request of the run goes over TLS as user root")

        recorder = Recorder()
        members = MemberView(cluster.urls)
        observer = Observer(members.urls, recorder)
        members.leader_hint = observer.leader_now
        nemesis = Nemesis(cluster, recorder, observer.leader_now, members, lab)
        schedule = plan_schedule(opts.seed, opts.nemesis, opts.duration_s, sorted(cluster.urls))
        say(f"chaos: seed {opts.seed}, {len(schedule)} fault(s) planned: "
            + "; ".join(p.describe() for p in schedule))
        workload = WorkloadConfig(clients=opts.clients if "kv" in opts.workload else 0, keys=opts.keys,
                                  op_timeout_s=opts.op_timeout_s, seed=opts.seed,
                                  key_prefix=f"chaos-{int(recorder.started_at_unix):x}-k" if opts.endpoints
                                  else "chaos-k")
        etcd_workload = replace(workload, clients=opts.clients if "etcd" in opts.workload else 0,
                                key_prefix=workload.key_prefix[:-1] + "e")  # chaos-e0, ...
        kv_keys = workload.key_names() if workload.clients or not etcd_workload.clients else []
        etcd_keys = etcd_workload.key_names() if etcd_workload.clients else []
        etcd_nodes = etcd_clients.EtcdNodes(RUN_ACCESS.get(), opts.op_timeout_s)
        if etcd_keys and (missing := await etcd_nodes.learn(members.urls())):
            raise ChaosError(f"{', '.join(missing)}: no etcd API (`raftkv node --listen-etcd`) in /raft-state; the "
                             "etcd workload's clients need one on every node")
        coordination = Coordination(opts.workload, recorder, opts.seed, opts.op_timeout_s, kv_keys + etcd_keys)
        stop_clients, stop_observer = asyncio.Event(), asyncio.Event()
        observer_task = asyncio.create_task(observer.run(stop_observer))
        members_task = asyncio.create_task(members.run(stop_observer))
        try:
            await coordination.start(members.urls, stop_clients)
        except RuntimeError as e:
            raise ChaosError(f"the watch, lease and lock workloads could not start: {e}") from None
        clients_task = asyncio.create_task(_gather(
            run_clients(workload, members.urls, recorder, stop_clients),
            etcd_clients.run_clients(etcd_workload, members.urls, recorder, stop_clients, etcd_nodes)))
        nemesis_task = asyncio.create_task(nemesis.run(schedule, opts.duration_s))
        try:
            await _progress(opts, recorder, nemesis, observer, clients_task)
        finally:
            stop_clients.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(nemesis_task), MAX_FAULT_OVERRUN_S)
            if not nemesis_task.done():
                nemesis_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await nemesis_task
            await asyncio.wait_for(clients_task, opts.op_timeout_s + 10)
            await coordination.stop_clients()
            recorder.mark("workload end")
            await nemesis.heal_all()
            recorder.mark("healed")
        if not nemesis_task.cancelled() and nemesis_task.exception():
            raise ChaosError(f"the nemesis failed: {_first_error(nemesis_task.exception())!r}")

        liveness = []
        if nemesis.unhealed:
            liveness.append(f"could not heal {', '.join(nemesis.unhealed)}")
        converged, view = await observer.wait_stable(opts.recover_timeout_s)
        if not converged:
            liveness.append(f"after healing: {view}")
        say(f"chaos: after healing: {view}")
        final_members = await _final_members(members)
        local = await final_reads(final_members, kv_keys, recorder)
        if etcd_keys:
            local.update(await etcd_clients.final_reads(etcd_nodes, final_members, etcd_keys, recorder))
        await etcd_nodes.close()
        digests = await _digests(final_members)
        recorder.mark("final reads")
        if coordination.active:
            await coordination.settle(final_members, final_members.get(observer.leader_now() or ""),
                                      lambda: observer.wait_stable(opts.recover_timeout_s))
            recorder.mark("leases gone, histories read")
        stop_observer.set()
        await asyncio.gather(observer_task, members_task)

        say(f"chaos: checking {len(recorder.ops)} operations ...")
        judgement = await asyncio.to_thread(judge, recorder, local, converged, liveness, digests=digests,
                                            side_checks=judge_coordination(coordination.record))
        meta = {**opts.as_dict(), "nodeUrls": cluster.urls, "schedule": [asdict(p) for p in schedule],
                "finalMembers": final_members, "removedIDs": sorted(members.removed_ids),
                "network": "netns lab" if lab else "attached" if opts.endpoints else "loopback",
                # What `recheck` needs to judge this run again without the cluster:
                "finalLocalValues": local, "converged": converged, "livenessNotes": liveness,
                "finalDigests": digests, "coordination": coordination.record}
        paths = write_report(out_dir, recorder, judgement, meta)
        if "member" in opts.nemesis:
            say(f"chaos: final members {', '.join(sorted(final_members))}; removed for good: "
                f"{', '.join(sorted(members.removed_ids)) or 'none'}")
        say(f"chaos: timeline {paths['timeline']}  history {paths['history']}")
        if judgement.violations or judgement.inconclusive:
            for node in sorted(cluster.urls):
                tail = cluster.log_tail(node, 1500)
                if tail:
                    say(f"----- {node} log (tail) -----\n{tail}")
        return judgement
    finally:
        if nemesis is not None:  # the cluster stops next: no member needs adding back
            with contextlib.suppress(Exception):
                await nemesis.heal_faults()
        await asyncio.to_thread(cluster.stop)


MAX_FAULT_OVERRUN_S = 5.0


async def _gather(*clients: Coroutine[Any, Any, None]) -> None:
    await asyncio.gather(*clients)


def _first_error(error: BaseException | None) -> BaseException | None:
    """The nemesis runs its tracks in a task group: show what failed, not the group."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


async def _final_members(members: MemberView) -> dict[str, str]:
    """{member id: URL} of the final configuration, as the leader tells it (after convergence)."""
    await members.refresh_now()
    return members.urls()


async def _digests(urls: dict[str, str]) -> dict[str, list]:
    """{node: [lastApplied, kvDigest]} from nodes that offer a digest (others are left out)."""
    out = {}
    async with run_session() as session:
        for node, url in sorted(urls.items()):
            status, data, _, _ = await call(session, "GET", f"{url}/raft-state?digest=true", None, 5.0)
            if status == 200 and isinstance(data, dict) and data.get("kvDigest") is not None:
                out[node] = [data.get("lastApplied"), data["kvDigest"]]
    return out


async def _progress(opts: ChaosOptions, recorder: Recorder, nemesis: Nemesis, observer: Observer,
                    clients_task: asyncio.Task) -> None:
    with tqdm(total=int(opts.duration_s), unit="s", desc="chaos", disable=not opts.progress, file=sys.stderr,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}s {postfix}") as bar:
        shown = 0
        while (now := recorder.now()) < opts.duration_s:
            if clients_task.done():
                clients_task.result()  # a client crashed: raise its error now
            await asyncio.sleep(min(0.5, opts.duration_s - now))
            whole = min(int(recorder.now()), int(opts.duration_s))
            if whole > shown:
                bar.update(whole - shown)
                shown = whole
            c = recorder.counts()
            bar.set_postfix_str(f"ok={c['ok']} fail={c['fail']} unknown={c['unknown']} "
                                f"leader={observer.leader_now() or '-'} "
                                f"fault={nemesis.current_label}", refresh=True)


def run_in_lab(opts: ChaosOptions) -> int:
    """Build a netns lab here, run the chaos run inside its client namespace, always tear it down.
    Returns the child's exit code."""
    problems = validate(opts)
    if problems:
        raise ChaosError("; ".join(problems))
    remove_stale_labs()
    lab = Lab(opts.node_ids)
    try:
        lab.create()
        child_opts = ChaosOptions(**{**opts.as_dict(), "lab_tag": lab.tag})
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as spec:
            spec.write(child_opts.to_json())
        cmd = [*lab.exec_prefix(lab.client_ns), sys.executable, "-m", "raftkv.chaos.worker", spec.name]
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait()
        except BaseException:
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            raise
        finally:
            Path(spec.name).unlink(missing_ok=True)
    finally:
        lab.destroy()


def recheck(out_dir: Path) -> Judgement:
    """Judge a saved run (`run.json`) again and redraw its timeline: no cluster needed."""
    path = Path(out_dir) / "run.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ChaosError(f"cannot read {path}: {e}") from None
    recorder = Recorder.from_json(saved)
    meta = saved.get("meta", {})
    judgement = judge(recorder, meta.get("finalLocalValues"), meta.get("converged", True),
                      meta.get("livenessNotes", []), digests=meta.get("finalDigests"),
                      side_checks=judge_coordination(meta.get("coordination")))
    write_report(Path(out_dir), recorder, judgement, meta)
    return judgement
