"""The chaos clients: concurrent reads, writes and CAS on a few keys against random nodes.

Theory of operation
-------------------
Each client is a loop: pick a key, an operation and a node (from its own seeded `Random`, so the
*choices* replay from the seed even though timing cannot; the nodes are the members of the moment,
`members()`, which follows `GET /members`), take the time, send one HTTP request,
take the time again, and record what it learned as an `Operation`. A client never retries: a
retry would blur what the system acknowledged. Values written are unique integers
(`client * 1_000_000 + n`), so any value read names the one write that produced it.

How an answer becomes an outcome (the checker's semantics, `raftkv.check.history`):

    200                          ok (a read sees body["value"]; a cas swapped: True)
    404 on GET                   ok: a read of "absent"
    412 on a cas                 ok with result False (it read the current value, wrote nothing)
    503                          fail: definitely not applied (raftkv/node/errors.py)
    504, 5xx other than 503      unknown: may or may not have been applied
    connection refused, or the   fail: the request never reached a server (true only because
      connect itself timed out       `single_send_session` turns off aiohttp's silent resend of PUTs)
    timeout or a connection      unknown: the request was sent; only the reply was lost
      lost after sending

Reads that fail or time out are recorded too; the checker drops them (they observed nothing).
A CAS expects the value this client last saw for the key (absent if it saw nothing), which makes
the CAS succeed often enough to be interesting.

Final reads: after the run is healed and converged, `final_reads` reads every key on every node
(the runner passes the members of the final configuration),
linearizably (recorded into the history, so the checker covers "the newest value on every node")
and with `?stale=true` (local state, compared across nodes to find divergent replicas).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from raftkv.chaos.connect import RUN_ACCESS, run_session
from raftkv.chaos.recorder import Recorder
from raftkv.check import Operation

__all__ = ["WorkloadConfig", "call", "final_reads", "perform", "run_clients"]

CONNECT_TIMEOUT_S = 1.0
REFUSED_BACKOFF_S = 0.1


@dataclass(frozen=True)
class WorkloadConfig:
    clients: int = 5
    keys: int = 3
    read_fraction: float = 0.5
    cas_fraction: float = 0.2  # the rest are plain writes
    op_timeout_s: float = 3.0
    think_s: float = 0.02  # pause between a client's operations, so histories stay checkable
    seed: int = 0
    # The checker takes every key to start absent: on a cluster this run did not start (which may
    # hold an earlier run's keys) the runner makes the names the run's own.
    key_prefix: str = "chaos-k"

    def key_names(self) -> list[str]:
        return [f"{self.key_prefix}{i}" for i in range(self.keys)]


async def call(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, timeout_s: float = 3.0
) -> tuple[int | None, Any, str | None, bool]:
    """(status, JSON body, error, maybe_sent). status None: no HTTP answer; then `maybe_sent`
    says whether the request could have reached the server (False only when connecting failed)."""
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=min(CONNECT_TIMEOUT_S, timeout_s))
    try:
        async with session.request(method, url, json=body, timeout=timeout) as resp:
            text = await resp.text()
            try:
                data = json.loads(text) if text else None
            except ValueError:
                data = text
            return resp.status, data, None, True
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
        return None, None, f"{type(e).__name__}: {e}", False
    except (aiohttp.ClientError, TimeoutError) as e:
        return None, None, f"{type(e).__name__}: {e}".rstrip(": "), True


def _outcome(kind: str, status: int | None, maybe_sent: bool, data: Any) -> tuple[str, Any]:
    """(outcome, result) for an HTTP answer; see the table in the module docstring."""
    if status is None:
        return ("unknown" if maybe_sent else "fail"), None
    if kind == "read":
        if status == 200 and isinstance(data, dict):
            return "ok", data.get("value")
        if status == 404:
            return "ok", None
        return "fail", None  # an unanswered read observed nothing: the checker drops it either way
    if status == 200:
        return "ok", True if kind == "cas" else None
    if status == 412 and kind == "cas":
        return "ok", False
    if status == 503 or 400 <= status < 500:
        return "fail", None
    return "unknown", None  # 504, and any unexpected 5xx: assume it may have happened


async def perform(
    session: aiohttp.ClientSession,
    recorder: Recorder,
    client: str | int,
    node: str,
    url: str,
    kind: str,
    key: str,
    value: Any,
    expected: Any,
    timeout_s: float,
) -> tuple[Operation, dict[str, Any]]:
    """Send one request, record it (with its node and HTTP status); return both."""
    if kind == "read":
        method, body = "GET", None
    else:
        method = "PUT"
        body = {"value": value}
        if kind == "cas":
            body.update({"prev_exist": False} if expected is None else {"prev_value": expected})
    start = recorder.now()
    status, data, error, maybe_sent = await call(session, method, f"{url}/kv/{key}", body, timeout_s)
    end = recorder.now()
    outcome, result = _outcome(kind, status, maybe_sent, data)
    op = Operation(
        client=client,
        kind=kind,  # type: ignore[arg-type]
        key=key,
        invoke_time=start,
        complete_time=end,
        outcome=outcome,  # type: ignore[arg-type]
        value=value if kind != "read" else None,
        expected=expected if kind == "cas" else None,
        result=result,
    )
    meta: dict[str, Any] = {"node": node, "status": status}
    if error:
        meta["error"] = error[:200]
    elif status is not None and status >= 400 and isinstance(data, dict):
        meta["error"] = str(data.get("error", ""))[:200]
    recorder.record(op, **meta)
    return op, meta


@dataclass(frozen=True)
class PlannedOp:
    key: str
    node: str
    kind: str  # "read", "write" or "cas"
    value: int | None  # what a write or CAS writes: unique per client (index * 1,000,000 + n)
    expected: Any  # what a CAS expects: the value this client last saw of the key
    pause_s: float  # the think time after it


class ClientPlan:
    """What one client does next, drawn from its own seeded stream (a run replays from its seed,
    whichever API the client speaks), and the value it last saw of each key."""

    def __init__(self, cfg: WorkloadConfig, index: int, stream: str) -> None:
        self.cfg, self.index = cfg, index
        self.rng = random.Random(f"{cfg.seed}/{stream}/{index}")
        self.keys = cfg.key_names()
        self.seen: dict[str, Any] = {}
        self.writes = 0

    def next(self, urls: Mapping[str, str]) -> PlannedOp:
        cfg, rng = self.cfg, self.rng
        key = rng.choice(self.keys)
        node = rng.choice(sorted(urls))
        roll = rng.random()
        kind = "read" if roll < cfg.read_fraction else "cas" if roll < cfg.read_fraction + cfg.cas_fraction else "write"
        value = None
        if kind != "read":
            self.writes += 1
            value = self.index * 1_000_000 + self.writes
        expected = self.seen.get(key) if kind == "cas" else None
        return PlannedOp(key, node, kind, value, expected, cfg.think_s * (0.5 + rng.random()))

    def learn(self, planned: PlannedOp, op: Operation) -> None:
        """Remember what an operation that succeeded says the key now holds."""
        if op.outcome != "ok":
            return
        if planned.kind == "read":
            self.seen[planned.key] = op.result
        elif planned.kind == "write" or op.result:
            self.seen[planned.key] = planned.value


async def _client_loop(
    index: int,
    cfg: WorkloadConfig,
    members: Callable[[], Mapping[str, str]],
    recorder: Recorder,
    stop: asyncio.Event,
    session: aiohttp.ClientSession,
) -> None:
    plan = ClientPlan(cfg, index, "client")
    while not stop.is_set():
        urls = members()
        planned = plan.next(urls)
        op, meta = await perform(session, recorder, index, planned.node, urls[planned.node], planned.kind,
                                 planned.key, planned.value, planned.expected, cfg.op_timeout_s)
        plan.learn(planned, op)
        pause_s = planned.pause_s
        if op.outcome == "fail" and meta.get("status") is None:
            pause_s += REFUSED_BACKOFF_S  # a node is down: do not flood the history with refusals
        if pause_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), pause_s)


async def run_clients(cfg: WorkloadConfig, members: Callable[[], Mapping[str, str]], recorder: Recorder,
                      stop: asyncio.Event) -> None:
    """Run `cfg.clients` clients until `stop` is set and each one's last request has finished;
    `members()`: the {node: URL} to choose from, asked before each operation."""
    connector = RUN_ACCESS.get().connector(limit=0, force_close=False)
    async with run_session(connector=connector) as session:
        await asyncio.gather(*(_client_loop(i, cfg, members, recorder, stop, session) for i in range(cfg.clients)))


async def final_reads(
    urls: Mapping[str, str], keys: list[str], recorder: Recorder, timeout_s: float = 5.0
) -> dict[str, dict[str, Any]]:
    """Read every key on every node: linearizable reads go into the history (client "final");
    returns {key: {node: stale local value, or the string "<error ...>"}} for the divergence check."""
    local: dict[str, dict[str, Any]] = {k: {} for k in keys}
    async with run_session() as session:
        for key in keys:
            for node in sorted(urls):
                await perform(session, recorder, "final", node, urls[node], "read", key, None, None, timeout_s)
                stale_url = f"{urls[node]}/kv/{key}?stale=true"
                status, data, error, _ = await call(session, "GET", stale_url, None, timeout_s)
                if status == 200 and isinstance(data, dict):
                    local[key][node] = data.get("value")
                elif status == 404:
                    local[key][node] = None
                else:
                    local[key][node] = f"<error {status} {error or ''}>".strip()
    return local
