"""A network lab of Linux network namespaces, where partitions are real cuts in a real network.

Theory of operation
-------------------
Layout (<tag> is the creating process's pid and a letter, so labs of parallel runs never collide and a
lab whose creator died can be recognised and removed by `remove_stale_labs`):

    rkv<tag>-hub      a namespace holding the bridge `br0`; it has no address of its own
    rkv<tag>-n1..nN   one per node: `eth0` (a veth) with 10.99.0.(10+i)/24, and `lo`
    rkv<tag>-client   the chaos clients: `eth0` with 10.99.0.2/24

Each veth's other end (`p<i>` / `pc`) lives in the hub and is enslaved to `br0`. Nothing is
created in the root namespace and no lab namespace has a default route, so lab traffic can only
reach lab addresses (docs/NETNS.md's safety rule: test traffic never leaves from the root namespace).

Cuts are nftables rules in the hub's bridge forward hook (`table bridge raftkv`, chain `cut`),
matched on IPv4 source and destination; every change replaces the whole chain in one atomic
`nft -f` transaction, so the network is always in exactly one described state (`NetState`). Only
node-to-node traffic is cut; the client namespace keeps reaching every node, so an isolated old
leader still gets client requests and must refuse them (503/504), as in the seed's experiment 2.

Latency: the kernel here has no `tc netem` (measured, see docs/NETNS.md), so `add_latency` puts an
iptables NFQUEUE rule in each node namespace's OUTPUT chain (node-to-node traffic only) and runs
`raftkv.chaos.delayer` there, which releases each packet after delay +- jitter. That needs the
`iptables` command (Debian package iptables); without it `add_latency` raises LabUnavailable.
A node's rules go in only after its delayer said "ready" (it prints that only once the kernel
acknowledged its queue binding); a delayer that fails makes `add_latency` undo what it did and
raise with the delayer's own stderr, so latency is either in place on every node or nowhere.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import select
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Lab", "LabUnavailable", "NetState", "lab_unavailable_reason", "remove_stale_labs"]

SUBNET_PREFIX = "10.99.0."
CLIENT_ADDRESS = SUBNET_PREFIX + "2"
NFT_TABLE = "raftkv"
NFT_CHAIN = "cut"
_NAME_RE = re.compile(r"^rkv(\d+)[a-z]*-(hub|client|n\d+)$")
_lab_counter = itertools.count()
COMMAND_TIMEOUT_S = 10.0
DELAYER_START_TIMEOUT_S = 15.0
DELAYER_STOP_TIMEOUT_S = 5.0
LATENCY_QUEUE = 0  # the NFQUEUE number; each node namespace has its own set of queues


class LabUnavailable(RuntimeError):
    """This machine cannot build the lab (not root, no `ip` or `nft`): the reason is the message."""


def lab_unavailable_reason() -> str | None:
    """None when a lab can be built here, else why not (for a printed skip)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (Debian packages iproute2, nftables; ./dev test installs them)"
    return None


def _run(args: list[str], stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def node_address(index: int) -> str:
    """Lab address of node number `index` (1-based)."""
    assert 1 <= index <= 200, index
    return f"{SUBNET_PREFIX}{10 + index}"


@dataclass(frozen=True)
class NetState:
    """What the lab's network does now: directed cuts between node ids and random loss.

    `cuts` holds (src, dst) pairs whose packets are dropped from src to dst; a full partition of
    a and b is both (a, b) and (b, a). `loss_percent` applies to every node-to-node direction not
    already cut.
    """

    cuts: frozenset[tuple[str, str]] = frozenset()
    loss_percent: int = 0
    label: str = "healed"

    @staticmethod
    def partition(groups: Iterable[Iterable[str]], label: str) -> NetState:
        """Nodes in different groups cannot talk (both directions); a node may sit in several
        groups (a "bridge" node then reaches both sides)."""
        groups = [set(g) for g in groups]
        every = set().union(*groups)
        cuts = {
            (a, b)
            for a in every
            for b in every
            if a != b and not any(a in g and b in g for g in groups)
        }
        return NetState(frozenset(cuts), 0, label)

    def describe(self) -> dict:
        return {"label": self.label, "cuts": sorted(list(c) for c in self.cuts), "lossPercent": self.loss_percent}


@dataclass
class Lab:
    """Build with `Lab(node_ids).create()` (or as a context manager); always `destroy()`."""

    node_ids: list[str]
    tag: str = field(default_factory=lambda: _new_tag())
    created: list[str] = field(default_factory=list)
    state: NetState = field(default_factory=NetState)
    _delayers: list[subprocess.Popen] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"rkv{self.tag}-hub"

    @property
    def client_ns(self) -> str:
        return f"rkv{self.tag}-client"

    def node_ns(self, node_id: str) -> str:
        return f"rkv{self.tag}-n{self.node_ids.index(node_id) + 1}"

    def address(self, node_id: str) -> str:
        return node_address(self.node_ids.index(node_id) + 1)

    def exec_prefix(self, namespace: str) -> list[str]:
        """Prefix a command with this to run it inside `namespace`."""
        return ["ip", "netns", "exec", namespace]

    def _run_in(self, namespace: str, args: list[str], stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        """`_run` inside `namespace`: bounded, and a failure raises RuntimeError naming the command."""
        return _run([*self.exec_prefix(namespace), *args], stdin=stdin, check=check)

    # ---------------------------------------------------------------- building and removing ----

    def create(self) -> Lab:
        reason = lab_unavailable_reason()
        if reason:
            raise LabUnavailable(reason)
        try:
            self._add_ns(self.hub)
            _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
            _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
            _run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
            for i, node_id in enumerate(self.node_ids, start=1):
                self._add_member(self.node_ns(node_id), f"p{i}", node_address(i))
            self._add_member(self.client_ns, "pc", CLIENT_ADDRESS)
            self._run_in(self.hub, ["nft", "-f", "-"], stdin=self._ruleset(NetState()))
        except BaseException:
            self.destroy()
            raise
        return self

    def _add_ns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self.created.append(name)

    def _add_member(self, namespace: str, port: str, address: str) -> None:
        self._add_ns(namespace)
        # Both ends are made inside the hub and the peer moved straight into the member's
        # namespace: no interface ever exists in the root namespace.
        _run(["ip", "-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", namespace])
        _run(["ip", "-n", self.hub, "link", "set", port, "master", "br0"])
        _run(["ip", "-n", self.hub, "link", "set", port, "up"])
        _run(["ip", "-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0"])
        _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
        _run(["ip", "-n", namespace, "link", "set", "lo", "up"])

    def destroy(self) -> None:
        """Kill every process left in the lab's namespaces (by pid), then delete the namespaces.
        Idempotent and never raises: it runs in `finally` blocks."""
        for proc in self._delayers:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.communicate()  # reap it and close its pipes (SIGKILL cannot be ignored: no hang)
        self._delayers.clear()
        for name in reversed(self.created):
            _kill_namespace_processes(name)
            with contextlib.suppress(Exception):
                _run(["ip", "netns", "delete", name], check=False)
        self.created.clear()

    def __enter__(self) -> Lab:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # ---------------------------------------------------------------- the network's state ------

    def apply(self, state: NetState) -> None:
        """Replace every cut and loss rule with `state`'s, atomically."""
        unknown = {n for pair in state.cuts for n in pair} - set(self.node_ids)
        if unknown:
            raise ValueError(f"unknown node ids in cuts: {sorted(unknown)}")
        if not 0 <= state.loss_percent <= 100:
            raise ValueError("loss_percent must be within 0..100")
        self._run_in(self.hub, ["nft", "-f", "-"], stdin=self._ruleset(state))
        self.state = state

    def heal(self) -> None:
        self.apply(NetState())

    def add_latency(self, delay_ms: float, jitter_ms: float = 0.0, seed: int | None = None) -> None:
        """Delay every node-to-node packet by delay_ms +- jitter_ms (both directions: each node
        delays what it sends). Replaces any latency already in place. All or nothing: if a
        delayer or a rule fails, what was added is removed and RuntimeError says why."""
        if shutil.which("iptables") is None:
            raise LabUnavailable("added latency needs `iptables` (Debian package iptables) for its NFQUEUE target")
        self.remove_latency()
        try:
            for i, node in enumerate(self.node_ids):
                self._start_delayer(node, delay_ms, jitter_ms, None if seed is None else seed + i)
                # Rules only once the queue is bound: until then --queue-bypass lets packets through
                # undelayed, and a test measuring right after add_latency() would see no latency.
                self._latency_rules(node, "-A", check=True)
        except BaseException:
            self.remove_latency()
            raise

    def remove_latency(self) -> None:
        if self._delayers:  # (appended before each delayer's rules go in)
            for node in self.node_ids:
                # Not checked: a node whose delayer failed to start has no rules to delete.
                self._latency_rules(node, "-D", check=False)
        for proc in self._delayers:
            _stop(proc)
        self._delayers.clear()

    def _start_delayer(self, node: str, delay_ms: float, jitter_ms: float, seed: int | None) -> None:
        """Start `node`'s delayer and return once it has bound its queue; RuntimeError if it cannot."""
        ns = self.node_ns(node)
        # Run by path, not `-m raftkv.chaos.delayer`: it imports nothing of raftkv, and skipping
        # the package's imports (aiohttp, ...) makes it start in milliseconds, not a second.
        cmd = [*self.exec_prefix(ns), sys.executable, str(Path(__file__).with_name("delayer.py")),
               "--queue", str(LATENCY_QUEUE), "--delay-ms", str(delay_ms), "--jitter-ms", str(jitter_ms)]
        if seed is not None:
            cmd += ["--seed", str(seed)]
        # stderr is a pipe nobody reads while the delayer runs: it writes there only when it exits.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        self._delayers.append(proc)
        said = _read_line(proc, DELAYER_START_TIMEOUT_S)
        if said != "ready":
            errors = _stop(proc)
            raise RuntimeError(f"the delayer in {ns} did not start (said {said!r}, exit {proc.returncode}): "
                               f"{errors or 'no error output'}")

    def _latency_rules(self, node: str, action: str, check: bool) -> None:
        """Append (-A) or delete (-D) the rules handing `node`'s packets for other nodes to its
        delayer; clients keep an undelayed path, as with the nft cuts."""
        for other in self.node_ids:
            if other != node:
                self._run_in(self.node_ns(node), [
                    "iptables", "-t", "mangle", action, "OUTPUT", "-d", self.address(other),
                    "-j", "NFQUEUE", "--queue-num", str(LATENCY_QUEUE), "--queue-bypass"], check=check)

    def rules_text(self) -> str:
        """The hub's live ruleset, as nft lists it (for tests and debugging)."""
        return self._run_in(self.hub, ["nft", "list", "table", "bridge", NFT_TABLE]).stdout

    def _ruleset(self, state: NetState) -> str:
        lines = [
            f"table bridge {NFT_TABLE} {{}}",
            f"flush table bridge {NFT_TABLE}",
            f"table bridge {NFT_TABLE} {{",
            f"  chain {NFT_CHAIN} {{",
            "    type filter hook forward priority 0; policy accept;",
        ]
        for src, dst in sorted(state.cuts):
            lines.append(f"    ip saddr {self.address(src)} ip daddr {self.address(dst)} drop")
        if state.loss_percent:
            for src in self.node_ids:
                for dst in self.node_ids:
                    if src != dst and (src, dst) not in state.cuts:
                        lines.append(
                            f"    ip saddr {self.address(src)} ip daddr {self.address(dst)} "
                            f"numgen random mod 100 < {state.loss_percent} drop"
                        )
        lines += ["  }", "}"]
        return "\n".join(lines) + "\n"


def _read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    """One line of a child's stdout, or "" after timeout_s / at its exit."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline().strip() if ready else ""


def _stop(proc: subprocess.Popen) -> str:
    """Stop a child (SIGTERM, SIGKILL if it lingers), reap it, and return its stderr. Idempotent."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, errors = proc.communicate(timeout=DELAYER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, errors = proc.communicate()
    return (errors or "").strip()


def _new_tag() -> str:
    """The creator's pid, then a letter per lab this process made (a, b, ... z, aa, ...)."""
    n = next(_lab_counter)
    return f"{os.getpid()}" + "z" * (n // 26) + chr(ord("a") + n % 26)


def _namespace_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _kill_namespace_processes(name: str) -> None:
    for pid in _namespace_pids(name):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, 9)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_labs() -> list[str]:
    """Delete lab namespaces whose creating process is gone (left by a run that was SIGKILLed)."""
    if lab_unavailable_reason():
        return []
    removed = []
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NAME_RE.match(name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            _kill_namespace_processes(name)
            _run(["ip", "netns", "delete", name], check=False)
            removed.append(name)
    return removed
