"""Key history, watches and leases on a real cluster: the HTTP routes, a watch that resumes from
its Last-Event-ID with no gap and no duplicate, and leases that expire on the leader's clock,
never early across a leader change."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from cluster import LocalCluster, http

pytestmark = pytest.mark.timeout(120)


def put(url: str, key: str, value: Any, **extra: Any) -> dict:
    status, body = http("PUT", f"{url}/kv/{key}", {"value": value, **extra})
    assert status == 200, body
    return body


async def read_events(url: str, query: str, count: int, headers: dict | None = None,
                      timeout_s: float = 15.0) -> list[tuple[str, str | None, dict]]:
    """The first `count` SSE messages of GET /watch?query, as (event, id, data)."""
    messages: list[tuple[str, str | None, dict]] = []
    async with aiohttp.ClientSession() as session, session.get(f"{url}/watch?{query}", headers=headers or {},
                                                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
        assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
        fields: dict[str, str] = {}
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if fields:
                messages.append((fields.get("event", "message"), fields.get("id"), json.loads(fields["data"])))
                fields = {}
                if len(messages) == count:
                    return messages
    return messages


def test_history_revision_reads_and_compaction(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    url = cluster.url(leader)
    revisions = [put(url, "h", i)["revision"] for i in range(4)]
    http("DELETE", f"{url}/kv/h")
    status, history = http("GET", f"{url}/kv/h/history")
    assert status == 200 and [v["kv"] and v["kv"]["value"] for v in history["versions"]] == [0, 1, 2, 3, None]
    status, old = http("GET", f"{url}/kv/h?revision={revisions[1]}")
    assert status == 200 and old["value"] == 1
    assert http("GET", f"{url}/kv?prefix=h&revision={revisions[2]}")[1]["items"][0]["value"] == 2
    assert http("GET", f"{url}/kv/h?revision=999999")[0] == 400  # not reached yet
    status, compacted = http("POST", f"{url}/compact", {"revision": revisions[2]})
    assert status == 200 and compacted["compacted"] == revisions[2], compacted
    follower = next(n for n in cluster.urls if n != leader)
    status, gone = http("GET", f"{cluster.url(follower)}/kv/h?revision={revisions[1]}")
    assert status == 410 and gone["compactRevision"] == revisions[2], gone
    assert http("GET", f"{cluster.url(follower)}/kv/h?revision={revisions[2]}")[1]["value"] == 2
    # .../history names a history for every method: a key ending so is spelt %2Fhistory, read and written
    for method, path in (("PUT", "/kv/h/history"), ("DELETE", "/kv/h/history"), ("PUT", "/h/history")):
        status, refused = http(method, url + path, {"value": 1} if method == "PUT" else None)
        assert status == 405 and "%2Fhistory" in refused["error"], (method, path, refused)
    assert http("PUT", f"{url}/kv/h%2Fhistory", {"value": "mine"})[0] == 200
    assert http("GET", f"{url}/kv/h%2Fhistory")[1]["value"] == "mine"


def test_a_watch_streams_every_change_and_resumes_from_its_last_event_id(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    follower = cluster.url(next(n for n in cluster.urls if n != leader))
    written = [put(cluster.url(leader), f"w/{i}", i)["revision"] for i in range(3)]
    put(cluster.url(leader), "unrelated", 1)
    first = asyncio.run(read_events(follower, "prefix=w/&start_revision=1&prev_kv=true", 3))
    assert [int(m[1]) for m in first] == written
    assert [m[2]["events"][0]["kv"]["value"] for m in first] == [0, 1, 2]

    async def resume_while_writing() -> list:
        reader = asyncio.create_task(read_events(follower, "prefix=w/", 3, headers={"Last-Event-ID": first[-1][1]}))
        await asyncio.sleep(0.3)
        for i in range(3, 5):
            await asyncio.to_thread(put, cluster.url(leader), f"w/{i}", i)
        await asyncio.to_thread(http, "DELETE", f"{cluster.url(leader)}/kv/w/0")
        return await reader

    resumed = asyncio.run(resume_while_writing())
    events = [(m[2]["events"][0]["type"], m[2]["events"][0]["key"]) for m in resumed]
    assert events == [("put", "w/3"), ("put", "w/4"), ("delete", "w/0")]  # no gap, no duplicate
    assert [int(m[1]) for m in resumed] == sorted(int(m[1]) for m in resumed)
    status, body = http("GET", f"{follower}/watch?key=a&prefix=b")
    assert status == 400 and "exactly one" in body["error"]


def test_a_lease_keeps_its_key_while_kept_alive_and_its_expiry_deletes_it_everywhere(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    url = cluster.url(leader)
    status, lease = http("POST", f"{url}/leases", {"ttl": 2})
    assert status == 200 and lease["ttl"] == 2
    put(url, "svc/me", "10.0.0.9", lease=lease["id"])
    follower = cluster.url(next(n for n in cluster.urls if n != leader))
    for _ in range(4):  # 3 s of keep-alives, some through a follower
        assert http("POST", f"{follower}/leases/{lease['id']}/keepalive")[0] == 200
        time.sleep(0.75)
    status, info = http("GET", f"{follower}/leases/{lease['id']}")
    assert status == 200 and info["keys"] == ["svc/me"] and 0 < info["remaining"] <= 2
    deadline = time.monotonic() + 6
    while http("GET", f"{url}/kv/svc/me")[0] == 200:
        assert time.monotonic() < deadline, "the lease did not expire"
        time.sleep(0.1)
    cluster.wait_converged()
    for node in cluster.urls:
        assert http("GET", f"{cluster.url(node)}/kv/svc/me?stale=true")[0] == 404
    assert http("POST", f"{url}/leases/{lease['id']}/keepalive")[0] == 404
    assert http("PUT", f"{url}/kv/late", {"value": 1, "lease": lease["id"]})[0] == 404


def test_a_new_leader_does_not_expire_a_lease_early(cluster: LocalCluster) -> None:
    leader = cluster.wait_for_leader()
    lease = http("POST", f"{cluster.url(leader)}/leases", {"ttl": 3})[1]
    put(cluster.url(leader), "svc/held", 1, lease=lease["id"])
    assert http("POST", f"{cluster.url(leader)}/leases/{lease['id']}/keepalive")[0] == 200
    kept_alive = time.monotonic()
    cluster.supervisor.kill(leader)
    survivors = [n for n in cluster.urls if n != leader]
    new = cluster.wait_for_leader(among=survivors)
    while time.monotonic() - kept_alive < 2.7:  # within the TTL of the acknowledged keep-alive
        assert http("GET", f"{cluster.url(new)}/kv/svc/held")[0] == 200
        time.sleep(0.2)
    deadline = time.monotonic() + 8
    while http("GET", f"{cluster.url(new)}/kv/svc/held")[0] == 200:
        assert time.monotonic() < deadline, "the new leader never expired the lease"
        time.sleep(0.1)
