"""The cluster's own account of what committed, read at the end of a run: the reference the watch,
lease and lock judges compare the clients' records with.

Theory of operation
-------------------
After healing and convergence every final member is asked, with `?stale=true` (its own state,
which is the point: each replica is judged on what *it* holds), for the history of every key the
run wrote or saw (`GET /kv/{key}/history`): each retained version with the revision that made it,
deletions included. Keys that were deleted do not show up in a range, so the key names come from
the clients' own records (every key the workloads wrote is known to them) plus every key a watcher
was told of and every key alive under the prefix at the end.

`committed_revisions` turns one node's answer into {revision: {key: kv or None}}: what the store
says each revision did to the watched keys. An event a watcher received is committed exactly when
this reference has the same change at the same revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from raftkv.chaos.connect import run_session
from raftkv.chaos.workload import call

__all__ = ["NodeHistories", "committed_revisions", "live_keys", "read_histories"]

PAGE_LIMIT = 1000

# {node: {"compactRevision": C, "keys": {key: [{"revision": R, "kv": {...} or None}, ...] oldest
# first, or "<error ...>"}}}: C is the highest compacted revision any answer named (below it a
# history may be incomplete, and the judges say so instead of guessing)
NodeHistories = dict[str, dict[str, Any]]


def _kv_path(key: str) -> str:
    return "/kv/" + quote(key, safe="/")


async def read_histories(urls: Mapping[str, str], keys: Iterable[str], timeout_s: float = 5.0) -> NodeHistories:
    """Every key's retained versions on every node (its local state: `?stale=true`)."""
    out: NodeHistories = {}
    async with run_session() as session:
        for node, url in sorted(urls.items()):
            found: dict[str, Any] = {}
            compacted = 0
            for key in sorted(set(keys)):
                status, data, error, _ = await call(session, "GET", f"{url}{_kv_path(key)}/history?stale=true",
                                                    None, timeout_s)
                if status == 200 and isinstance(data, dict):
                    found[key] = data["versions"]
                    compacted = max(compacted, data.get("compactRevision") or 0)
                else:
                    found[key] = f"<error {status} {error or data}>"
            out[node] = {"compactRevision": compacted, "keys": found}
    return out


async def live_keys(urls: Iterable[str], prefix: str, patience_s: float = 15.0,
                    timeout_s: float = 5.0) -> tuple[dict[str, dict[str, Any]], int]:
    """({key: kv} of every key under `prefix` now, the revision read at): a linearizable read,
    from the first of `urls` that answers (asked in turn, while the cluster elects a leader)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + patience_s
    errors: list[str] = []
    async with run_session() as session:
        while loop.time() < deadline:
            for url in urls:
                try:
                    return await _range(session, url, prefix, timeout_s)
                except RuntimeError as e:
                    errors.append(str(e))
            await asyncio.sleep(0.2)
    raise RuntimeError(f"no node answered a read of {prefix!r} within {patience_s:g}s: {errors[-3:]}")


async def _range(session: Any, url: str, prefix: str, timeout_s: float) -> tuple[dict[str, dict[str, Any]], int]:
    items: dict[str, dict[str, Any]] = {}
    start = ""
    while True:
        query = f"prefix={quote(prefix, safe='')}&start={quote(start, safe='')}&limit={PAGE_LIMIT}"
        status, data, error, _ = await call(session, "GET", f"{url}/kv?{query}", None, timeout_s)
        if status != 200 or not isinstance(data, dict):
            raise RuntimeError(f"GET {url}/kv?{query}: {status} {error or data}")
        items.update((kv["key"], kv) for kv in data["items"])
        if not data["more"]:
            return items, data["revision"]
        start = data["next"]


def committed_revisions(node_history: Mapping[str, Any]) -> dict[int, dict[str, dict[str, Any] | None]]:
    """{revision: {key: the kv it wrote, or None for a delete}} from one node's entry of
    `NodeHistories` (keys whose history could not be read are left out; the caller reports them)."""
    out: dict[int, dict[str, dict[str, Any] | None]] = {}
    for key, versions in node_history["keys"].items():
        if isinstance(versions, str):
            continue
        for version in versions:
            out.setdefault(version["revision"], {})[key] = version["kv"]
    return out
