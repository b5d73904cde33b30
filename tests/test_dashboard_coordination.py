"""The dashboard's coordination panel against a real 3-node cluster: leases with what is left of
their TTL and their keys, lock holders with their fencing tokens, the watch feed relayed in revision
order (read from the page's own WebSocket), and the "service discovery with a lease" tour run in
Chromium to the moment its watcher sees the service's key vanish.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest
from cluster import LocalCluster, http, module_cluster
from dashboard_pages import SHOTS, Dashboard, chromium, follow_tour, opened, shot, wait_until

from raftkv.dashboard.coordination import MAX_EVENTS_PER_REVISION, lock_queue, relayed_revision, renewed

pytestmark = pytest.mark.timeout(180)

PREFIX = "coord-test/"
LOCK = PREFIX + "lock"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    yield from module_cluster(tmp_path_factory.mktemp("coordination") / "data")


def page_events(dashboard: Dashboard, done: Callable[[list[dict]], Any], timeout_s: float = 20.0) -> list[dict]:
    """The events a page receives on /ws (its hello's recorded past, then the live batches), until
    `done(events)` holds. An event emitted while the hello is sent can come in both (hub.py sends
    the hello, then adds the page to the batches' receivers): each is kept once, by its seq."""
    async def collect() -> list[dict]:
        events: list[dict] = []
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session, session.ws_connect(dashboard.url + "/ws") as ws:
            while not done(events):
                left = deadline - time.monotonic()
                assert left > 0, f"not within {timeout_s} s; the last events: {events[-5:]}"
                msg = await ws.receive(timeout=left)
                assert msg.type == aiohttp.WSMsgType.TEXT, msg
                seen = {e["seq"] for e in events[-1000:]}
                events += [e for e in json.loads(msg.data)["events"] if e["seq"] not in seen]
        return events

    return asyncio.run(collect())


def ok(method: str, url: str, body: Any = None) -> dict:
    status, answer = http(method, url, body)
    assert status == 200, (method, url, status, answer)
    return answer


def relayed(events: list[dict]) -> list[dict]:
    """The revisions of PREFIX relayed since the dashboard last started watching it, in arrival order."""
    starts = [k for k, e in enumerate(events) if e["type"] == "watch" and e.get("started")]
    since = events[starts[-1]:] if starts else []
    return [r for e in since if e["type"] == "watch" and e["prefix"] == PREFIX for r in e["revisions"]]


def test_dashboard_reports_leases_lock_holders_and_relays_the_watch_in_revision_order(
        cluster: LocalCluster, dashboard: Dashboard) -> None:
    url = cluster.url(cluster.wait_for_leader())
    assert dashboard.api("POST", "/api/coordination/watch", {"prefix": PREFIX})[0] == 200
    assert dashboard.api("POST", "/api/coordination/watch", {"prefix": 7})[0] == 400
    holder, waiter = (ok("POST", url + "/leases", {"ttl": 30})["id"] for _ in range(2))
    holder_key, waiter_key = f"{LOCK}/{holder:x}", f"{LOCK}/{waiter:x}"
    writes = [ok("PUT", url + "/kv/" + holder_key, {"value": "a", "lease": holder})["revision"],
              ok("PUT", url + "/kv/" + waiter_key, {"value": "b", "lease": waiter})["revision"],
              ok("PUT", url + f"/kv/{PREFIX}svc", {"value": "10.0.0.7:80", "lease": holder})["revision"],
              ok("PUT", url + f"/kv/{PREFIX}plain", {"value": 1})["revision"],
              ok("DELETE", url + f"/kv/{PREFIX}plain")["revision"]]
    granted_at = time.time()

    def pictures(events: list[dict]) -> list[dict]:  # those showing every key attached above
        return [e for e in events if e["type"] == "coordination" and {(x["id"], len(x["keys"])) for x in e["leases"]}
                >= {(str(holder), 2), (str(waiter), 1)}]

    events = page_events(dashboard, lambda evs: pictures(evs) and [r["revision"] for r in relayed(evs)] == writes)
    got = relayed(events)
    assert [(r["revision"], [(e["type"], e["key"]) for e in r["events"]]) for r in got] == [
        (writes[0], [("put", holder_key)]), (writes[1], [("put", waiter_key)]), (writes[2], [("put", PREFIX + "svc")]),
        (writes[3], [("put", PREFIX + "plain")]), (writes[4], [("delete", PREFIX + "plain")])]
    assert got[0]["events"][0]["lease"] == f"{holder:x}" and got[4]["events"][0]["value"] == "1"

    picture = pictures(events)[-1]
    leases = {x["id"]: x for x in picture["leases"]}
    assert leases[str(holder)]["keys"] == sorted([holder_key, PREFIX + "svc"])
    assert leases[str(waiter)]["keys"] == [waiter_key]
    for lease in leases.values():  # the leader's clock: counting down from 30 since the grant, no further
        assert lease["ttl"] == 30
        assert 30 - (picture["rt"] - granted_at) - 1.5 <= lease["remaining"] <= 30, (lease, picture["rt"] - granted_at)
    lock = next(x for x in picture["locks"] if x["name"] == LOCK)
    assert lock["holder"]["key"] == holder_key and lock["holder"]["token"] == writes[0]
    assert [(w["key"], w["token"]) for w in lock["waiting"]] == [(waiter_key, writes[1])]

    time.sleep(3.0)  # a keep-alive then puts the holder's lease back to its full TTL: news, sent at once
    renewed_at = time.time()
    ok("POST", url + f"/leases/{holder}/keepalive")
    # Counted back to the keep-alive, what is left is nearly the whole TTL again; without it, 27 s at most.
    page_events(dashboard, lambda evs: any(e["type"] == "coordination" and e["rt"] > renewed_at and any(
        x["id"] == str(holder) and x["remaining"] + (e["rt"] - renewed_at) >= 28.5 for x in e["leases"])
        for e in evs), 10.0)
    revoked = ok("DELETE", url + f"/leases/{holder}")["revision"]

    def after_revoke(evs: list[dict]) -> bool:
        return any(r["revision"] == revoked for r in relayed(evs)) and any(
            e["type"] == "coordination" and e["rt"] > renewed_at
            and str(holder) not in {x["id"] for x in e["leases"]} for e in evs)

    events = page_events(dashboard, after_revoke)
    gone = next(r for r in relayed(events) if r["revision"] == revoked)
    assert sorted((e["type"], e["key"]) for e in gone["events"]) == [("delete", holder_key), ("delete", PREFIX + "svc")]
    assert [r["revision"] for r in relayed(events)] == [*writes, revoked]
    latest = [e for e in events if e["type"] == "coordination"][-1]
    lock = next(x for x in latest["locks"] if x["name"] == LOCK)
    assert lock["holder"]["key"] == waiter_key and lock["holder"]["token"] == writes[1] and not lock["waiting"]
    ok("DELETE", url + f"/leases/{waiter}")


def test_a_keep_alive_or_a_new_key_is_news_but_the_clock_running_is_not() -> None:
    before = {"leader": "node1", "locks": [], "more": 0, "revision": 9,
              "leases": [{"id": "7", "ttl": 10, "keys": ["a"], "remaining": 8.0}]}

    def later(remaining: float, keys: tuple[str, ...] = ("a",)) -> dict:
        return {**before, "leases": [{**before["leases"][0], "remaining": remaining, "keys": list(keys)}]}

    assert not renewed(before, later(6.9), 1.0)  # one second of the leader's clock
    assert renewed(before, later(9.9), 1.0)  # renewed
    assert renewed(before, later(6.9, ("a", "b")), 1.0)  # a key attached
    assert renewed(before, {**later(6.9), "leader": "node2"}, 1.0)


def test_a_lock_is_held_by_the_smallest_create_revision_and_a_busy_revision_is_cut() -> None:
    items = [{"key": "L/b", "value": 2, "create_revision": 12, "lease": 11},
             {"key": "L/a", "value": 1, "create_revision": 9, "lease": 10}]
    lock = lock_queue("L", items)
    assert lock["holder"] == {"key": "L/a", "token": 9, "value": "1", "lease": "a"}
    assert [w["token"] for w in lock["waiting"]] == [12]
    many = {"revision": 5, "events": [{"type": "delete", "key": f"k{n}", "prev": {"value": "x" * 500}}
                                      for n in range(MAX_EVENTS_PER_REVISION + 3)]}
    cut = relayed_revision(many)
    assert len(cut["events"]) == MAX_EVENTS_PER_REVISION and cut["more"] == 3
    assert len(cut["events"][0]["value"]) <= 60


@pytest.mark.browser
def test_service_discovery_tour_ends_with_the_watcher_seeing_the_key_vanish(
        cluster: LocalCluster, dashboard: Dashboard) -> None:
    cluster.wait_for_leader(30)
    url = cluster.url(cluster.wait_for_leader())
    started = time.time()
    job = ok("POST", url + "/leases", {"ttl": 120})["id"]  # a lock held beside the tour, for the screenshot
    ok("PUT", url + f"/kv/backups/{job:x}", {"value": "host-a", "lease": job})
    try:
        with chromium() as browser, opened(browser, dashboard) as pg:
            def at_step(caption: str) -> None:
                if "expired: the watcher saw DELETE services/web" in caption:
                    line = pg.locator('#watch-feed [data-type="delete"][data-key="services/web"]')
                    wait_until("the feed to show the delete", lambda: line.count() == 1)
                    assert pg.locator('#watch-feed [data-type="put"][data-key="services/web"]').count() == 1
                    assert pg.locator('#locks [data-lock="backups"]').get_attribute("data-token")
                    wait_until("the expired lease to leave the Leases list", lambda: pg.locator(
                        "#leases li", has_text="services/web").count() == 0, 5)
                    shot(pg, "service-discovery.png", "#h-coordination")
                    pg.click("#tour-back")  # the step before, as the cluster was then: the key not yet gone
                    wait_until("Back to show the feed without the delete", lambda: line.count() == 0, 5)
                    pg.click("#tour-next")
                    wait_until("Next to come back to the present", lambda: line.count() == 1, 5)

            captions = follow_tour(pg, "service-discovery", at_step)
        assert (SHOTS / "service-discovery.png").stat().st_mtime > started, "the step with the delete was not seen"
        assert "404" in captions[-2] and captions[-1].endswith("Demo finished."), captions
    finally:
        ok("DELETE", url + f"/leases/{job}")
