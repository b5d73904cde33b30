"""The dashboard against a cluster with auth on, in headless Chromium and over plain HTTP: it never
lends its own credentials (here root's, so a leak would show as a change) to whoever opens the page.

Before anyone logs in the page shows only a login form and every route but the page's own refuses,
and nothing on the cluster changes. A wrong password is refused with the node's words. A person
logged in acts with their own token: alice, who may write app/ only, writes there from the form and
sees the node's 403 for another key, finds the lab and the partitions greyed with the reason, and
does not get the live view (it shows every key's writes). viewer, who may read every key and do
nothing else, gets the live view and a read-only page, and loses the view as soon as the role
that let them read is revoked. root may use every control.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cluster import LocalCluster, http
from dashboard_pages import Dashboard, cards, wait_until
from playwright.sync_api import Error as PlaywrightError

from raftkv import promtext
from raftkv.client import Access, Credentials
from raftkv.dashboard.sessions import COOKIE, ROUTE_NEEDS, Need, abilities

pytestmark = [pytest.mark.timeout(120), pytest.mark.browser]

PASSWORDS = {"root": "root-secret", "alice": "alice-secret", "viewer": "viewer-secret"}

# One request for each route the dashboard guards (a new route must be added here: checked below).
GUARDED: dict[str, list[tuple[str, str, Any]]] = {
    "/ws": [("GET", "/ws", None)],
    "/api/state": [("GET", "/api/state", None)],
    "/api/trace.ndjson": [("GET", "/api/trace.ndjson", None)],
    "/api/traces": [("GET", "/api/traces", None)],  # the nodes' spans name keys (url.path)
    "/api/traces/{trace_id}": [("GET", "/api/traces/0af7651916cd43dd8448eb211c80319c", None)],
    "/api/coordination/watch": [("POST", "/api/coordination/watch", {"prefix": ""})],
    "/api/nodes/{node}/{op}": [("POST", "/api/nodes/node1/force-election", None),
                               ("POST", "/api/nodes/node1/isolate", None), ("POST", "/api/nodes/node2/crash", None)],
    "/api/members": [("POST", "/api/members", {"name": "node9"})],
    "/api/members/{node}/promote": [("POST", "/api/members/node3/promote", None)],
    "/api/members/{node}": [("DELETE", "/api/members/node3", None)],
    "/api/heal": [("POST", "/api/heal", None)],
    "/api/split": [("POST", "/api/split", {"groups": [["node1"], ["node2", "node3"]]})],
    "/api/cut": [("POST", "/api/cut", {"src": "node1", "dst": "node2"})],
    "/api/link-quality": [("POST", "/api/link-quality", {"node": "node1", "loss_percent": 50, "delay_ms": 0})],
    "/api/kv": [("POST", "/api/kv", {"op": "put", "key": "leak", "value": 1}),
                ("POST", "/api/kv", {"op": "get", "key": "secret"})],
    "/api/load": [("POST", "/api/load", {"writers": 1, "seconds": 1})],
    "/api/load/stop": [("POST", "/api/load/stop", None)],
    "/api/slowmo": [("POST", "/api/slowmo", {"factor": 2})],
    "/api/lab": [("POST", "/api/lab", {"active": True})],
    "/api/lab/clock": [("POST", "/api/lab/clock", {"held": True})],
    "/api/lab/timeout/{node}": [("POST", "/api/lab/timeout/node1", None)],
    "/api/lab/rate": [("POST", "/api/lab/rate", {"rate": 1})],
    "/api/lab/deliver": [("POST", "/api/lab/deliver", {"ids": []})],
    "/api/lab/drop": [("POST", "/api/lab/drop", {"ids": []})],
    "/api/lab/snapshot": [("POST", "/api/lab/snapshot", {"every": 5})],
    "/api/tour": [("POST", "/api/tour", {"demo": "election"})],
    "/api/tour/next": [("POST", "/api/tour/next", None)],
    "/api/tour/stop": [("POST", "/api/tour/stop", None)],
}


def websocket_handshake(url: str, cookie: str | None = None) -> int:
    """The status a real WebSocket handshake to `url` gets (101: the stream opened)."""
    async def go() -> int:
        async with aiohttp.ClientSession(headers={"Cookie": cookie} if cookie else None) as session:
            try:
                async with session.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0)):
                    return 101
            except aiohttp.WSServerHandshakeError as e:
                return e.status

    with ThreadPoolExecutor(1) as thread:  # Playwright's sync API runs a loop in this thread
        return thread.submit(asyncio.run, go()).result()


def basic(user: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes with auth on: root; alice (readwrite app/); viewer (read every key, nothing else)."""
    c = LocalCluster(tmp_path_factory.mktemp("dashboard-auth") / "data", nodes=3).start()
    try:
        c.wait_for_leader(30)
        url = c.url("node1")

        def setup(method: str, path: str, body: Any = None) -> None:
            status, answer = http(method, url + path, body)
            assert status == 200, (path, answer)

        for user, password in PASSWORDS.items():  # while auth is off anyone may set users up (as in etcd)
            setup("PUT", f"/auth/users/{user}", {"password": password})
        setup("PUT", "/auth/roles/app")
        setup("POST", "/auth/roles/app/permissions", {"access": "readwrite", "key": "app/", "prefix": True})
        setup("PUT", "/auth/users/alice/roles/app")
        setup("PUT", "/auth/roles/all-reader")
        setup("POST", "/auth/roles/all-reader/permissions", {"access": "read", "key": "", "prefix": True})
        setup("PUT", "/auth/users/viewer/roles/all-reader")
        setup("PUT", "/kv/secret", {"value": "only for readers"})
        setup("POST", "/auth/enable")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def dashboard(cluster: LocalCluster) -> Iterator[Dashboard]:
    """Served as `raftkv up` serves it (with the supervisor), reaching the nodes as root."""
    d = Dashboard(list(cluster.urls.values()), cluster.supervisor, Access(credentials=Credentials(
        "root", PASSWORDS["root"])))
    wait_until("the dashboard to know the nodes have auth on",
               lambda: d.api("GET", "/api/session")[1]["auth"]["enabled"] is True, 10)
    yield d
    d.stop()


@contextlib.contextmanager
def fresh_page(browser: Any, dashboard: Dashboard) -> Iterator[Any]:
    """The dashboard in a browser context of its own (no cookie); no JavaScript error allowed."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.goto(dashboard.url)
    wait_until("the page to hear who is logged in", lambda: _view(pg) != "waiting", 10)
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def log_in(pg: Any, user: str, password: str | None = None) -> None:
    pg.fill("#login-name", user)
    pg.fill("#login-password", PASSWORDS[user] if password is None else password)
    pg.click("#login-send")


def node_view(cluster: LocalCluster) -> dict[str, Any]:
    """What a leak through the dashboard would change on each node: the requests it carried out that
    change something (any method but GET answered 2xx: a write, a forced election, a lab or membership
    change; the dashboard passes a logged-in person's requests on, and the node refuses them), its
    store, members, faults and lab. Not its term or applied index: on this shared machine an
    election may come of the load alone (a loop stalled past the election timeout), and a forced
    one would show as the POST that forced it."""
    cluster.wait_converged()
    out = {}
    for node, url in cluster.urls.items():
        state = http("GET", url + "/raft-state")[1]
        lab = http("GET", url + "/lab", headers=basic("root"))[1]
        metrics = promtext.parse(http("GET", url + "/metrics", headers=basic("root"))[1])
        changing = {labels: count for (name, labels), count in metrics.items()
                    if name == "raft_http_requests_total" and dict(labels)["method"] != "GET"
                    and dict(labels)["status"].startswith("2")}
        out[node] = (changing, state["revision"], state["keys"], state["voters"], state["learners"], state["faults"],
                     lab["holding"], lab["clockHeld"], lab["tickMs"], lab["snapshotEvery"])
    return out


def test_before_login_the_page_shows_nothing_of_the_cluster_and_every_route_refuses(
        browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    guarded = {template for template, need in ROUTE_NEEDS.items() if need is not Need.OPEN}
    assert set(GUARDED) == guarded, "a route the dashboard guards has no request in GUARDED"
    before = node_view(cluster)

    status, session = dashboard.api("GET", "/api/session")
    assert status == 200 and session["user"] is None and session["auth"]["enabled"] is True
    assert not {"nodes", "reach", "features", "lab"} & set(session), session
    for template, requests in GUARDED.items():
        for method, path, body in requests:
            status, answer = http(method, dashboard.url + path, body)
            assert status == 401 and answer["reason"] == "login_required", (template, path, status, answer)
    assert websocket_handshake(dashboard.url + "/ws") == 401

    with fresh_page(browser, dashboard) as pg:
        assert pg.is_visible("#login-panel") and pg.is_visible("#login-name")
        assert not pg.is_visible("main")
        assert pg.locator("[data-node]").count() == 0 and pg.locator("[data-ring-node]").count() == 0
        text = pg.inner_text("body")
        for node, url in cluster.urls.items():
            assert node not in text and url.rpartition(":")[2] not in text, text

    assert node_view(cluster) == before, "a refused request changed the cluster"
    assert all(p.running for p in cluster.supervisor.nodes.values())
    assert http("GET", cluster.url("node1") + "/kv/leak", headers=basic("root"))[0] == 404


def test_a_wrong_password_is_refused_with_the_nodes_words(browser: Any, dashboard: Dashboard) -> None:
    with fresh_page(browser, dashboard) as pg:
        log_in(pg, "alice", "not-her-password")
        wait_until("the refusal on the page", lambda: "wrong user name or password" in pg.inner_text("#login-msg"))
        assert pg.evaluate("document.body.dataset.view") == "login" and not pg.is_visible("main")
        assert pg.context.cookies() == [], "a refused login set a cookie"
        assert pg.context.request.get(dashboard.url + "/api/state").status == 401


def test_a_user_with_a_prefix_writes_there_is_refused_elsewhere_and_finds_the_lab_greyed(
        browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    with fresh_page(browser, dashboard) as pg:
        log_in(pg, "alice")
        wait_until("alice's page", lambda: _view(pg) == "hidden")
        (cookie,) = pg.context.cookies()
        assert cookie["name"] == COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert PASSWORDS["alice"] not in cookie["value"] and pg.evaluate("document.cookie") == ""

        # No live view: it would show every key's writes, and alice may not read every key.
        note = pg.inner_text("#view-note")
        assert "live view is hidden" in note and "alice may not read every key" in note, note
        assert not pg.is_visible(".ring-panel") and not pg.is_visible(".logs-panel")
        for path in ("/ws", "/api/state", "/api/trace.ndjson"):
            answer = pg.context.request.get(dashboard.url + path)
            assert answer.status == 403 and answer.json()["reason"] == "live_view_hidden", (path, answer.status)
        assert websocket_handshake(dashboard.url + "/ws", f"{cookie['name']}={cookie['value']}") == 403

        # The write form acts as alice: under app/ it writes, elsewhere the node's 403 is shown.
        wait_until("what alice may write, said", lambda: "alice may not write keys outside app/" in pg.inner_text(
            "#kv-gate"), 5)
        pg.select_option("#kv-op", "put")
        pg.fill("#kv-key", "app/from-the-page")
        pg.fill("#kv-value", "7")
        pg.click("#kv-send")
        wait_until("the write's answer", lambda: pg.get_attribute("#kv-result", "data-status") == "200")
        assert http("GET", cluster.url("node2") + "/kv/app/from-the-page", headers=basic("root"))[1]["value"] == 7
        pg.fill("#kv-key", "not-hers")
        pg.click("#kv-send")
        wait_until("the node's refusal", lambda: pg.get_attribute("#kv-result", "data-status") == "403")
        assert "permission denied: user alice may not write key 'not-hers'" in pg.inner_text("#kv-result")
        assert http("GET", cluster.url("node1") + "/kv/not-hers", headers=basic("root"))[0] == 404

        # What needs admin is greyed, with the reason as its tooltip and in its panel.
        for control in ("#lab-toggle", "#heal", "#split", "#cut", "#slowmo", "#tour-run"):
            assert pg.is_disabled(control), control
            assert "needs the admin permission" in (pg.get_attribute(control, "title") or ""), control
        assert "needs the admin permission" in pg.inner_text("#lab-gate")
        assert "needs the admin permission" in pg.inner_text("#access-note")
        assert pg.is_disabled("#load-start") and "load-" in pg.get_attribute("#load-start", "title")

        # ...and refused if asked for all the same: by the nodes, or by the dashboard for the supervisor.
        before = node_view(cluster)
        for path, body, words in [("/api/lab", {"active": True}, "needs the admin permission"),
                                  ("/api/nodes/node2/crash", None, "needs the admin permission"),
                                  ("/api/nodes/node1/force-election", None, "needs the admin permission"),
                                  ("/api/tour", {"demo": "election"}, "needs the admin permission")]:
            answer = pg.context.request.post(dashboard.url + path, data=json.dumps(body or {}),
                                             headers={"Content-Type": "application/json"})
            assert answer.status == 403 and words in answer.json()["error"], (path, answer.status, answer.text())
        # A page of another site cannot make alice's browser act: her cookie goes nowhere from there.
        answer = pg.context.request.post(dashboard.url + "/api/kv", data=json.dumps(
            {"op": "put", "key": "app/cross-site", "value": 1}), headers={"Content-Type": "application/json",
                                                                        "Origin": "http://elsewhere.example"})
        assert answer.status == 403 and answer.json()["reason"] == "cross_site"
        assert node_view(cluster) == before
        assert all(p.running for p in cluster.supervisor.nodes.values())


def test_a_user_who_reads_every_key_sees_the_live_view_read_only_until_revoked(
        browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    with fresh_page(browser, dashboard) as pg:
        log_in(pg, "viewer")
        wait_until("the live view: three nodes with a status", lambda: len(
            [c for c in cards(pg).values() if c["term"]]) == 3, 20)
        wait_until("each node's log in the table", lambda: pg.locator("[data-log-node]").count() == 3)
        assert pg.is_hidden("#view-note") and pg.inner_text("#who") == "logged in as viewer"
        (cookie,) = pg.context.cookies()
        assert websocket_handshake(dashboard.url + "/ws", f"{cookie['name']}={cookie['value']}") == 101
        assert "Read-only" in pg.inner_text("#access-note") and "viewer may not write any key" in pg.inner_text(
            "#access-note")
        assert pg.context.request.get(dashboard.url + "/api/state").status == 200

        pg.select_option("#kv-op", "put")
        wait_until("the write greyed", lambda: pg.is_disabled("#kv-send"))
        assert "your user viewer may not write any key" in pg.get_attribute("#kv-send", "title")
        pg.select_option("#kv-op", "get")
        wait_until("the read allowed", lambda: pg.is_enabled("#kv-send"))
        pg.fill("#kv-key", "secret")
        pg.click("#kv-send")
        wait_until("the value read as viewer", lambda: pg.get_attribute("#kv-result", "data-status") == "200")
        assert "only for readers" in pg.inner_text("#kv-result")
        button = pg.locator('[data-node="node1"] button[data-op="force-election"]')
        assert button.is_disabled() and "needs the admin permission" in button.get_attribute("title")

        # The role that let viewer read every key is revoked: the open stream is closed, and the page says why.
        status, answer = http("DELETE", cluster.url("node1") + "/auth/users/viewer/roles/all-reader",
                              headers=basic("root"))
        assert status == 200, answer
        try:
            wait_until("the live view hidden", lambda: _view(pg) == "hidden", 15)
            assert "viewer may not read every key" in pg.inner_text("#view-note")
            assert pg.context.request.get(dashboard.url + "/api/state").status == 403
        finally:
            status, answer = http("PUT", cluster.url("node1") + "/auth/users/viewer/roles/all-reader",
                                  headers=basic("root"))
            assert status == 200, answer

        pg.click("#logout")
        wait_until("the login form again", lambda: _view(pg) == "login")
        assert pg.context.request.get(dashboard.url + "/api/state").status == 401


def test_root_may_use_every_control_and_acts_with_its_own_token(
        browser: Any, dashboard: Dashboard, cluster: LocalCluster) -> None:
    with fresh_page(browser, dashboard) as pg:
        log_in(pg, "root")
        wait_until("the live view", lambda: len([c for c in cards(pg).values() if c["term"]]) == 3, 20)
        for control in ("#lab-toggle", "#heal", "#split", "#slowmo", "#tour-run", "#load-start", "#kv-send"):
            assert pg.is_enabled(control) and pg.get_attribute(control, "title") is None, control
        assert pg.is_hidden("#access-note") and pg.inner_text("#lab-gate") == ""
        term = max(c["term"] for c in cards(pg).values())
        pg.locator('[data-node="node2"] button[data-op="force-election"]').click()
        wait_until("a new term after the forced election", lambda: max(c["term"] for c in cards(pg).values()) > term)
        assert "root: force election on node2" in pg.inner_text("#feed")
        pg.click("#add-node")  # the new node asks the cluster to add it with root's token
        wait_until("node4 joined and promoted", lambda: cards(pg).get("node4", {}).get("member") == "voter", 60)
        pg.locator('[data-node="node4"] button[data-op="remove"]').click()
        wait_until("node4 shown removed", lambda: cards(pg).get("node4", {}).get("member") == "removed", 30)
    # node4 may have led when it was removed: the election that follows ends before the next test looks
    cluster.wait_for_leader(30, among=["node1", "node2", "node3"])
    cluster.wait_converged()


def test_the_dashboard_command_watches_with_the_credentials_it_was_given(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """`raftkv dashboard --user`: its own event streams, logs and reads authenticate; a person still logs in."""
    import signal
    import subprocess
    import sys

    from raftkv.supervisor import free_ports

    port = free_ports(1)[0]
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "dashboard.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "raftkv", "dashboard", "--endpoints",
                                 ",".join(cluster.urls.values()), "--port", str(port), "--user", "viewer"],
                                env={**os.environ, "RAFTKV_PASSWORD": PASSWORDS["viewer"]}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until("the dashboard to answer", lambda: _answers(url), 20)
        assert http("GET", url + "/api/state")[0] == 401
        request = urllib.request.Request(url + "/api/login", data=json.dumps(
            {"name": "viewer", "password": PASSWORDS["viewer"]}).encode(), method="POST",
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            cookie = resp.headers["Set-Cookie"].split(";")[0]

        def every_node_watched() -> Any:
            body = http("GET", url + "/api/state", headers={"Cookie": cookie})[1]
            return all(n["status"] and body["reach"][n["id"]]["reach"] == "ok" for n in body["nodes"]) and body

        body = wait_until("a status from every node, over streams the nodes let the dashboard open",
                          every_node_watched, 20)
        assert sorted(n["id"] for n in body["nodes"]) == ["node1", "node2", "node3"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _answers(url: str) -> bool:
    try:
        return http("GET", url + "/api/session", timeout=2)[0] == 200
    except OSError:
        return False


def test_what_a_person_may_not_do_is_said_in_words() -> None:
    """From the permissions GET /auth/status reports: the reasons the page shows beside greyed controls."""
    def status(user: str, *perms: tuple[str, str, bool], admin: bool = False, every: bool = False) -> dict:
        return {"user": user, "admin": admin, "readsEveryKey": every,
                "permissions": [{"access": a, "key": k, "prefix": p} for a, k, p in perms]}

    alice = abilities(status("alice", ("readwrite", "app/", True), ("read", "config", False)))
    assert alice["writeScope"] == "your user alice may not write keys outside app/" and alice["write"] is None
    assert alice["admin"] == "needs the admin permission, which your user alice does not have"
    assert "alice may not read every key" in alice["view"] and "load-" in alice["load"] and not alice["readOnly"]
    bob = abilities(status("bob", ("write", "tmp/", True), ("readwrite", "app/", True), ("write", "x", False),
                           ("read", "", True), every=True))
    assert bob["writeScope"] == "your user bob may write only the keys under app/, the keys under tmp/, the key x"
    assert bob["view"] is None and bob["load"] is not None
    viewer = abilities(status("viewer", ("read", "", True), every=True))
    assert viewer["write"] == "your user viewer may not write any key" and viewer["readOnly"] and viewer["view"] is None
    everything = abilities(status("ops", ("readwrite", "", True), admin=True, every=True))
    assert all(everything[k] is None for k in ("admin", "write", "writeScope", "load", "view"))
    assert not everything["readOnly"]


def _view(pg: Any) -> str | None:
    """Which view the page shows; None while it is reloading (logging out reloads it)."""
    try:
        return pg.evaluate("document.body.dataset.view")
    except PlaywrightError:
        return None
