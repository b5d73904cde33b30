"""What a person can do from the dashboard, carried out against the real nodes and processes.

Theory of operation
-------------------
Every control is a call to an interface the cluster already has: a node's HTTP API (force an
election, `/simulate-partition`, the KV routes) or the local `Supervisor` (kill -9, stop, start,
restart, SIGSTOP/SIGCONT: `POST /api/nodes/{node}/{op}`, which `raftkv lab` uses too). The
dashboard never reaches into a node's internals. A node call carries the credentials of the person
who asked (`Hub.act`), so the nodes' own permission checks apply to them.

A write or read from the form may ask the node to trace it (`X-Raftkv-Trace: 1`); whenever the node
traced it (asked, or picked by its sampler) its answer names the trace, and so does the feed's line.

Partitions are built from `/simulate-partition` alone: isolating a node is
`{"partitioned": true}` on it; splitting the cluster into groups is, on every node, a cut to each
peer outside its group (both directions, so the split holds even if one node's rule is lost);
healing is `{"partitioned": false}` on every node, with loss and delay set back to none.

The lab's settings (hold-and-step, held clocks, slow motion, the snapshot interval) are lab.py's.
Each action is told to the pages in words, with an icon name the page draws (no emoji: the page
must read the same where no emoji font is installed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from typing import Any

import aiohttp

from raftkv.byte_text import canonical
from raftkv.client import key_path
from raftkv.node.tracing import TRACE_HEADER, TRACE_ID_HEADER
from raftkv.supervisor import NodeProcess

from .hub import Hub, NodeLink
from .words import plain_error

NODE_CALL_TIMEOUT_S = 6.0
REFUSED = frozenset({401, 403})  # a node refused the person (or has fault injection off), not a failure
STOP_GRACE_S = 10.0  # a node stopped from the lab gets this long to exit cleanly before kill -9

# The fields of POST /api/kv's body (`Controls.kv`): the page's read-and-write form.
KV_FIELDS = ("op", "key", "node", "value", "prev_value", "prev_revision", "prev_exist", "stale", "trace")

PROCESS_ACTIONS = {  # op of POST /api/nodes/{node}/{op}: (icon, what it does in words)
    "crash": ("crash", "crash (kill -9)"),
    "stop": ("stop", "stop (SIGTERM)"),
    "start": ("start", "start"),
    "restart": ("restart", "restart"),
    "pause": ("pause", "pause (SIGSTOP)"),
    "resume": ("start", "resume (SIGCONT)"),
}


class ControlError(Exception):
    def __init__(self, status: int, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.fields = status, message, fields


NO_SUPERVISOR = (
    "this dashboard is attached to a remote cluster (raftkv dashboard --endpoints ...) and has no "
    "supervisor, so it cannot {what}; run `raftkv up` to get a local cluster the dashboard can crash, "
    "pause and restart"
)


class Controls:
    def __init__(self, hub: Hub, supervisor: Any = None) -> None:
        self.hub = hub
        self.supervisor = supervisor

    # ------------------------------------------------------------------ node HTTP ----------------

    async def call(self, link: NodeLink, method: str, path: str, body: Any = None,
                   timeout_s: float = NODE_CALL_TIMEOUT_S, headers: dict[str, str] | None = None,
                   answer_headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """The node's status and JSON answer; `answer_headers`, if given, receives its headers."""
        try:
            async with self.hub.act(method, link.url.rstrip("/") + path, json=body, headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                if answer_headers is not None:
                    answer_headers.update(resp.headers)
                text = await resp.text()
                try:
                    return resp.status, json.loads(text) if text else None
                except ValueError:
                    return resp.status, text
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            raise ControlError(502, f"the dashboard cannot reach {link.id}: {plain_error(e)}", node=link.id) from None

    def link(self, node_id: str) -> NodeLink:
        try:
            return self.hub.link(node_id)
        except KeyError:
            raise ControlError(404, f"no node {node_id!r}; nodes are {sorted(self.hub.links)}") from None

    def _named(self, raft_id: Any) -> Any:
        """A member as the page names it (node4), not by the id it has in the cluster (node4-8ac3...)."""
        link = self.hub.by_raft_id(raft_id) if isinstance(raft_id, str) else None
        return raft_id if link is None else link.id

    async def force_election(self, node_id: str) -> dict:
        link = self.link(node_id)
        self.hub.action(f"force election on {node_id}", kind="force-election", icon="vote", target=node_id)
        status, body = await self.call(link, "POST", "/force-election")
        if status >= 400:
            raise ControlError(status, f"{node_id} refused: {error_text(body)}", node=node_id)
        return {"node": node_id, "result": body}

    # ------------------------------------------------------------------ partitions --------------

    async def _partition(
        self, link: NodeLink, partitioned: bool, peers: list[str] | None, direction: str = "both"
    ) -> dict:
        body: dict[str, Any] = {"partitioned": partitioned}
        if peers is not None:
            body["peers"] = peers
        if direction != "both":
            body["direction"] = direction
        return await self._post(link, "/simulate-partition", body, "the partition")

    async def _post(self, link: NodeLink, path: str, body: dict, what: str) -> dict:
        status, answer = await self.call(link, "POST", path, body)
        if status >= 400:
            raise ControlError(status, f"{link.id} refused {what}: {error_text(answer)}", node=link.id)
        return answer if isinstance(answer, dict) else {"answer": answer}

    async def isolate(self, node_id: str) -> dict:
        link = self.link(node_id)
        self.hub.action(f"cut {node_id} off from all its peers", kind="partition", icon="cut", target=node_id)
        return {"node": node_id, "result": await self._partition(link, True, None)}

    async def heal(self) -> dict:
        self.hub.action("heal the network: every link restored", kind="heal", icon="heal")
        results, errors, refusal = {}, {}, None
        for link in self.hub.links.values():
            try:
                results[link.id] = await self._restore(link)
            except ControlError as e:
                errors[link.id] = e.message
                refusal = refusal or (e if e.status in REFUSED else None)
        if refusal is not None and not results:  # refused everywhere (no permission): say so, not "done"
            raise refusal
        return {"healed": sorted(results), "errors": errors}

    async def split(self, groups: list[list[str]]) -> dict:
        ids = {n.id for n in self.hub.members()}
        if not isinstance(groups, list) or not groups or any(not isinstance(g, list) or not g for g in groups):
            raise ControlError(400, 'groups: non-empty lists of node ids, e.g. [["node1"], ["node2", "node3"]]')
        seen: list[str] = [n for g in groups for n in g]
        if unknown := set(seen) - ids:
            raise ControlError(400, f"groups: unknown nodes {sorted(unknown)}; nodes are {sorted(ids)}")
        if len(seen) != len(set(seen)):
            raise ControlError(400, "groups: a node may be in only one group")
        groups = [list(g) for g in groups] + [[n] for n in sorted(ids - set(seen))]
        text = " | ".join("{" + ", ".join(g) + "}" for g in groups)
        self.hub.action(f"split the cluster into {text}", kind="partition", icon="cut", groups=groups)
        await self.heal_quietly()
        results = {}
        for g in groups:
            for node_id in g:
                link = self.hub.links[node_id]
                outside = [self.hub.links[o].raft_id for o in ids - set(g)]
                if outside:
                    results[node_id] = await self._partition(link, True, sorted(outside))
        return {"groups": groups, "results": results}

    async def heal_quietly(self) -> None:
        for link in self.hub.links.values():
            with contextlib.suppress(ControlError):
                await self._restore(link)

    async def _restore(self, link: NodeLink) -> dict:
        """Every cut, one-way cut, loss and delay on this node's links removed."""
        await self._post(link, "/simulate-link", {"loss_percent": 0, "delay_ms": 0}, "the link change")
        return await self._partition(link, False, None)

    async def cut_one_way(self, src: str, dst: str) -> dict:
        """src stops reaching dst; dst still reaches src (cut on src's outbound side)."""
        source, target = self.link(src), self.link(dst)
        if source.id == target.id:
            raise ControlError(400, "a one-way cut needs two different nodes")
        self.hub.action(f"cut {src} → {dst} (one way: {dst} still reaches {src})", kind="partition", icon="cut",
                        src=src, dst=dst)
        return {"src": src, "dst": dst,
                "result": await self._partition(source, True, [target.raft_id], direction="outbound")}

    async def link_quality(self, node_id: str, loss_percent: float, delay_ms: float) -> dict:
        """Loss and latency on node_id's outgoing Raft traffic (0 and 0 restore the link)."""
        link = self.link(node_id)
        if not isinstance(loss_percent, (int, float)) or not isinstance(delay_ms, (int, float)):
            raise ControlError(400, "loss_percent and delay_ms must be numbers")
        self.hub.action(f"{node_id}'s outgoing links: {loss_percent}% loss, {delay_ms} ms delay", kind="link",
                        icon="lossy", target=node_id)
        body = {"loss_percent": loss_percent, "delay_ms": delay_ms}
        return {"node": node_id, "result": await self._post(link, "/simulate-link", body, "the link change")}

    # ------------------------------------------------------------------ processes ---------------

    def need_supervisor(self, what: str) -> Any:
        if self.supervisor is None:
            raise ControlError(501, NO_SUPERVISOR.format(what=what), unavailable=what)
        return self.supervisor

    async def process(self, node_id: str, op: str) -> dict:
        if op not in PROCESS_ACTIONS:
            raise ControlError(404, f"unknown process action {op!r}; one of {sorted(PROCESS_ACTIONS)}")
        icon, words = PROCESS_ACTIONS[op]
        sup = self.need_supervisor(f"{words} a node")
        link = self.link(node_id)
        if link.id not in sup.nodes:
            raise ControlError(404, f"the supervisor does not run {node_id}")
        if why := _not_applicable(op, sup.nodes[link.id]):  # said, not answered 200 for nothing done
            raise ControlError(409, f"{node_id} {why}: nothing to {words}; nothing was done")
        self.hub.action(f"{words} {node_id}", kind=op, icon=icon, target=node_id)
        act = {"crash": sup.kill, "stop": functools.partial(sup.stop, grace_s=STOP_GRACE_S), "start": sup.start,
               "restart": sup.restart, "pause": sup.pause, "resume": sup.resume}[op]
        await asyncio.get_running_loop().run_in_executor(None, act, link.id)
        return {"node": node_id, "process": sup.nodes[link.id].describe()}

    # ------------------------------------------------------------------ key-value --------------

    async def kv(self, req: dict) -> dict:
        op = req.get("op")
        key = req.get("key")
        if op not in ("put", "get", "delete", "cas"):
            raise ControlError(400, "op: one of put, get, delete, cas")
        if not isinstance(key, str) or not key:
            raise ControlError(400, "key: a non-empty string")
        if why := canonical(key):
            raise ControlError(400, f"key: {why}")
        node_id = req.get("node") or self._any_reachable()
        link = self.link(node_id)
        path = key_path(key)
        body: dict[str, Any] | None = None
        method = {"put": "PUT", "cas": "PUT", "get": "GET", "delete": "DELETE"}[op]
        if op in ("put", "cas"):
            if "value" not in req:
                raise ControlError(400, "value: required for put and cas")
            body = {"value": req["value"]}
            if op == "cas":
                for k in ("prev_value", "prev_revision", "prev_exist"):
                    if k in req and req[k] is not None:
                        body[k] = req[k]
                if len(body) == 1:
                    raise ControlError(400, "cas: give prev_value, prev_revision or prev_exist")
        if op == "get" and req.get("stale"):
            path += "?stale=true"
        asked = req.get("trace", False)
        if not isinstance(asked, bool):
            raise ControlError(400, "trace: true or false", field="trace")
        started = time.perf_counter()
        answer_headers: dict[str, str] = {}
        status, answer = await self.call(link, method, path, body, headers={TRACE_HEADER: "1"} if asked else None,
                                         answer_headers=answer_headers)
        ms = round((time.perf_counter() - started) * 1000, 2)
        trace_id = answer_headers.get(TRACE_ID_HEADER)  # a node that traced it names the trace (ratio or asked)
        served = self._named(answer.get("node")) if isinstance(answer, dict) else None
        forwarded = self._named(answer.get("forwardedBy")) if isinstance(answer, dict) else None
        rev = answer.get("revision") if isinstance(answer, dict) else None
        shown = f"={_short(req.get('value'))}" if op in ("put", "cas") else ""
        outcome = f"{status}" + (f" revision {rev}" if rev is not None else "")
        if op == "get" and status == 200 and isinstance(answer, dict):
            outcome += f" value {_short(answer.get('value'))}"
        via = f" (served by {served}" + (f", forwarded by {forwarded})" if forwarded else ")") if served else ""
        self.hub.action(f"{op.upper()} {key}{shown} asked {node_id}: {outcome}{via} in {ms} ms",
                        kind="kv", icon="write", op=op, key=key, status=status, revision=rev, servedBy=served,
                        traceId=trace_id)
        return {"op": op, "key": key, "askedNode": node_id, "status": status, "body": answer,
                "servedBy": served, "forwardedBy": forwarded, "revision": rev, "ms": ms, "traceAsked": asked,
                "traceId": trace_id}

    def _any_reachable(self) -> str:
        return (self.reachable_members() or list(self.hub.links.values()))[0].id

    def reachable_members(self) -> list[NodeLink]:
        """The members the dashboard reaches now, the leader first."""
        now = time.time()
        ok = [n for n in self.hub.members() if n.reach(now) == "ok"]
        return sorted(ok, key=lambda n: (n.status or {}).get("state") != "leader")


def error_text(body: Any) -> str:
    return str(body.get("error", body)) if isinstance(body, dict) else str(body)


def _not_applicable(op: str, node: NodeProcess) -> str | None:
    """Why `op` cannot be done to `node`'s process as it is, or None. Restart always can."""
    paused = node.paused and node.running
    if op in ("crash", "stop", "pause") and not node.running:
        return f"is not running ({node.exit_status or 'never started'})"
    if op == "pause" and paused:
        return "is paused already"
    if op == "resume" and not paused:
        return "is not paused"
    if op == "start" and node.running:
        return "is running already"
    return None


def _short(v: Any, limit: int = 40) -> str:
    text = json.dumps(v) if not isinstance(v, str) else repr(v)
    return text if len(text) <= limit else text[: limit - 1] + "…"
