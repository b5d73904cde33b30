"""The dashboard's web server: the page, one WebSocket for the browser, and the controls.

Theory of operation
-------------------
`run_dashboard(host, port, node_urls, supervisor)` runs an aiohttp app in the foreground until
Ctrl-C or SIGTERM (or until `stop_event` is set, when run in a thread), then returns, so that
`raftkv up` can stop its nodes. The app:

* serves `static/` (plain HTML, CSS, JavaScript and inline SVG: no CDN, no build step, works
  offline);
* `GET /ws`: a WebSocket that first sends a `hello` (nodes, what is available, the recent
  events) and then batches of events from the hub (see hub.py), live; both are bounded in bytes;
* `POST /api/...`: the controls (controls.py), the load generator (load.py), the guided tour
  (tour/: start, Next, stop); the lab (lab.py): `POST /api/lab` {active} turns hold-and-step on or
  off, `/api/lab/clock` {held}, `/api/lab/timeout/{node}`, `/api/lab/rate` {rate},
  `/api/lab/deliver` and `/api/lab/drop` {ids}, `/api/lab/snapshot` {every} (null restores), and
  `/api/slowmo` {factor} (every node's tick, changed at run time); `POST /api/members` (add a
  node), `POST /api/members/{node}/promote` and `DELETE /api/members/{node}` change the cluster's
  membership (membership.py); `POST /api/coordination/watch` {prefix, start_revision?} sets what the
  watch feed follows (coordination.py: leases, locks and that watch).
  Errors are JSON `{"error": ...}`; a number out of its range or not a
  number is a 400 naming the field and the range; what needs a supervisor answers 501 with the
  reason when the dashboard only attaches to a remote cluster;
* `GET /api/state`: each node's latest status and KV preview, reachability, safety, the lab, and
  how full the recorder is;
* `POST /v1/traces` (the nodes' OTLP spans), `GET /api/traces` and `/api/traces/{trace_id}` (a
  trace's spans and its waterfall): traces.py, waterfall.py; the pages are told which traces are
  here, and whether tracing is on, by an unrecorded `traces` event;
* `GET /api/trace.ndjson`: a header line (the nodes and the schema), then everything recorded, one
  JSON event per line: the page loads such a file back to replay it;
* `GET /api/session`, `POST /api/login` {name, password}, `POST /api/logout`: who is logged in and
  what they may do (sessions.py). While the nodes have auth on, the `gate` middleware admits each
  request by the route's need (sessions.ROUTE_NEEDS: open, observe, act, admin) and runs it as the
  person logged in, whose token every node call it makes carries; a request from another site
  (its Origin not this server) that could change something is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from raftkv.client import NO_ACCESS, Access

from .controls import KV_FIELDS, PROCESS_ACTIONS, REFUSED, ControlError, Controls
from .coordination import CoordinationView
from .hub import ACTING_FOR, MIB, BrowserClient, Hub, resolve_ids
from .lab import SLOWMO_MAX_FACTOR, Lab
from .load import MAX_SECONDS, MAX_WRITERS, LoadGenerator
from .membership import Membership
from .sessions import COOKIE, ROUTE_NEEDS, SESSION_TTL_S, Need, Sessions
from .tour import DEMOS, Tour
from .traces import TRACES_KEY, add_trace_routes, announce, node_environment, tracing_state

log = logging.getLogger("raftkv.dashboard")

STATIC_DIR = Path(__file__).parent / "static"
HUB_KEY: web.AppKey[Hub] = web.AppKey("hub", Hub)
CONTROLS_KEY: web.AppKey[Controls] = web.AppKey("controls", Controls)
LOAD_KEY: web.AppKey[LoadGenerator] = web.AppKey("load", LoadGenerator)
TOUR_KEY: web.AppKey[Tour] = web.AppKey("tour", Tour)
MEMBERSHIP_KEY: web.AppKey[Membership] = web.AppKey("membership", Membership)
LAB_KEY: web.AppKey[Lab] = web.AppKey("lab", Lab)
COORDINATION_KEY: web.AppKey[CoordinationView] = web.AppKey("coordination", CoordinationView)
SESSIONS_KEY: web.AppKey[Sessions] = web.AppKey("sessions", Sessions)
HERE_KEY: web.AppKey[tuple[str, int] | None] = web.AppKey("here")  # the host and port the dashboard listens on
MAX_REQUEST_BYTES = 2 * MIB  # a PUT of the largest value a node takes (1 MiB) fits, as on the nodes
MIN_LOAD_SECONDS = 0.1


def _error(status: int, message: str, **fields: Any) -> web.Response:
    return web.json_response({"error": message, **fields}, status=status)


@web.middleware
async def errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as e:
        return _error(e.status, e.message, **e.fields)
    except (ValueError, TypeError) as e:
        return _error(400, str(e))
    except RuntimeError as e:  # the load generator's "already running"
        return _error(409, str(e))


@web.middleware
async def gate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Admit the request as its route needs (sessions.py) and run it as the person it acts for."""
    origin = request.headers.get("Origin")
    if (request.method not in ("GET", "HEAD") or request.path == "/ws") and origin is not None \
            and urlsplit(origin).netloc != request.host:
        raise ControlError(403, f"a request from another site ({origin}) is refused", reason="cross_site")
    resource = request.match_info.route.resource
    need = ROUTE_NEEDS[resource.canonical] if resource is not None else Need.OPEN  # None: a 404 to come
    acting = await request.app[SESSIONS_KEY].admit(request, need)
    token = ACTING_FOR.set(acting)
    try:
        return await handler(request)
    except ControlError as e:
        if e.status in REFUSED:  # the feed said what was asked: say it was refused (permission, fault injection)
            request.app[HUB_KEY].action(f"refused: {e.message}", kind="refused", icon="cross")
        raise
    finally:
        ACTING_FOR.reset(token)


async def _json(request: web.Request, *allowed: str) -> dict:
    """The body: a JSON object of the `allowed` fields only (none: a route that takes no body,
    which an empty body and {} satisfy). A field the route does not know is refused, not ignored:
    `{"factr": 5}` would otherwise set slow motion to its default."""
    if not request.can_read_body or not (raw := await request.read()).strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("body: not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("body: must be a JSON object")
    if unknown := body.keys() - set(allowed):
        known = f"allowed: {', '.join(allowed)}" if allowed else f"{request.method} {request.path} takes no body"
        raise ControlError(400, f"body: unknown field {sorted(unknown)[0]!r} ({known})", field=sorted(unknown)[0])
    return body


def _number(body: dict, name: str, default: float, low: float, high: float, *, integer: bool) -> Any:
    """body[name] (or the default) if it is a JSON number (an integer if asked) within low..high;
    otherwise a 400 that names the field and the range."""
    value = body.get(name, default)
    kinds = (int,) if integer else (int, float)
    if type(value) not in kinds or not math.isfinite(value) or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        raise ControlError(400, f"{name}: {kind} from {low:g} to {high:g}", field=name, min=low, max=high)
    return value


# ---------------------------------------------------------------------- handlers -----------------


async def index(_request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def ws_handler(request: web.Request) -> web.StreamResponse:
    hub, sessions = request.app[HUB_KEY], request.app[SESSIONS_KEY]
    ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=1 << 20)
    await ws.prepare(request)
    async with sessions.streaming(ws, sessions.find(request)):
        return await _stream(ws, hub, request.app)


async def _stream(ws: web.WebSocketResponse, hub: Hub, app: web.Application) -> web.WebSocketResponse:
    client = BrowserClient()
    hello = hub.hello({**features(app), "traceIds": app[TRACES_KEY].ids()})
    hub.clients.add(client)  # with no await in between: each event is in the hello or in a later batch
    await ws.send_str(hello)

    async def pump() -> None:
        while True:
            await ws.send_str(await client.next_frame())

    task = asyncio.create_task(pump())
    try:
        async for msg in ws:
            if msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                break
    finally:
        hub.clients.discard(client)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    return ws


def features(app: web.Application) -> dict:
    controls, lab = app[CONTROLS_KEY], app[LAB_KEY]
    sup = controls.supervisor is not None
    why = None if sup else "needs a supervisor: start the cluster with `raftkv up` to crash, pause and restart nodes"
    return {
        "features": {
            "forceElection": {"available": True},
            "partition": {"available": True},
            "split": {"available": True},
            "oneWayCut": {"available": True},
            "lossDelay": {"available": True},
            "process": {"available": sup, "why": why},
            "load": {"available": True},
            "addNode": {"available": sup, "why": None if sup else
                        "adding a node starts a new node process, which needs the supervisor of `raftkv up`"},
            "removeNode": {"available": True},
            "tour": {"available": True, "demos": app[TOUR_KEY].titles()},
        },
        "lab": lab.for_page(),
        "tracing": tracing_state(node_environment(controls.supervisor), app[TRACES_KEY], app.get(HERE_KEY)),
        **lab.slowmo_info(),
    }


async def state(request: web.Request) -> web.Response:
    hub, controls, lab = request.app[HUB_KEY], request.app[CONTROLS_KEY], request.app[LAB_KEY]
    nodes = [
        {**n.describe(), "status": n.status, "kv": n.kv, "metrics": n.metrics}
        for n in hub.links.values()
    ]
    return web.json_response(
        {
            "nodes": nodes,
            "reach": hub.reach(),
            "safety": hub.safety.describe(),
            "supervisor": controls.supervisor is not None,
            "load": request.app[LOAD_KEY].last,
            "tour": {"running": request.app[TOUR_KEY].running},
            "lab": lab.for_page(),
            "recorder": hub.recorder.describe(),
            **lab.slowmo_info(),
        },
        dumps=lambda o: json.dumps(o, default=str),
    )


async def node_action(request: web.Request) -> web.Response:
    await _json(request)
    controls = request.app[CONTROLS_KEY]
    node, op = request.match_info["node"], request.match_info["op"]
    if op == "force-election":
        return web.json_response(await controls.force_election(node))
    if op == "isolate":
        return web.json_response(await controls.isolate(node))
    if op in PROCESS_ACTIONS:  # the supervisor's, which no node checks
        sessions = request.app[SESSIONS_KEY]
        await sessions.require_admin(sessions.find(request))
    return web.json_response(await controls.process(node, op))


async def member_add(request: web.Request) -> web.Response:
    body = await _json(request, "name", "promote")
    name, promote = body.get("name"), body.get("promote", True)
    if name is not None and not isinstance(name, str):
        raise ControlError(400, "name: a string, or leave it out for the next free nodeN", field="name")
    if not isinstance(promote, bool):
        raise ControlError(400, "promote: true or false", field="promote")
    return web.json_response(await request.app[MEMBERSHIP_KEY].add(name or None, promote))


async def member_promote(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(await request.app[MEMBERSHIP_KEY].promote(request.match_info["node"]))


async def member_remove(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(await request.app[MEMBERSHIP_KEY].remove(request.match_info["node"]))


async def heal(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(await request.app[CONTROLS_KEY].heal())


async def split(request: web.Request) -> web.Response:
    body = await _json(request, "groups")
    return web.json_response(await request.app[CONTROLS_KEY].split(body.get("groups")))


async def cut(request: web.Request) -> web.Response:
    body = await _json(request, "src", "dst")
    return web.json_response(await request.app[CONTROLS_KEY].cut_one_way(body.get("src"), body.get("dst")))


async def link_quality(request: web.Request) -> web.Response:
    body = await _json(request, "node", "loss_percent", "delay_ms")
    return web.json_response(await request.app[CONTROLS_KEY].link_quality(
        body.get("node"), body.get("loss_percent", 0), body.get("delay_ms", 0)))


async def kv(request: web.Request) -> web.Response:
    return web.json_response(await request.app[CONTROLS_KEY].kv(await _json(request, *KV_FIELDS)))


async def load_start(request: web.Request) -> web.Response:
    body = await _json(request, "writers", "seconds")
    writers = _number(body, "writers", 8, 1, MAX_WRITERS, integer=True)
    seconds = _number(body, "seconds", 10, MIN_LOAD_SECONDS, MAX_SECONDS, integer=False)
    return web.json_response(request.app[LOAD_KEY].start(writers, seconds))


async def load_stop(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(await request.app[LOAD_KEY].stop())


async def slowmo(request: web.Request) -> web.Response:
    body = await _json(request, "factor")
    factor = _number(body, "factor", 10, 1, SLOWMO_MAX_FACTOR, integer=True)
    return web.json_response(await request.app[LAB_KEY].set_speed(factor))


async def lab_active(request: web.Request) -> web.Response:
    lab = request.app[LAB_KEY]
    active = _flag(await _json(request, "active"), "active")
    return web.json_response(await (lab.enter() if active else lab.leave()))


async def lab_clock(request: web.Request) -> web.Response:
    return web.json_response(await request.app[LAB_KEY].set_clock(_flag(await _json(request, "held"), "held")))


async def lab_timeout(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(await request.app[LAB_KEY].time_out(request.match_info["node"]))


async def lab_rate(request: web.Request) -> web.Response:
    return web.json_response(await request.app[LAB_KEY].set_rate((await _json(request, "rate")).get("rate")))


async def lab_deliver(request: web.Request) -> web.Response:
    return web.json_response(await request.app[LAB_KEY].deliver((await _json(request, "ids")).get("ids")))


async def lab_drop(request: web.Request) -> web.Response:
    return web.json_response(await request.app[LAB_KEY].drop((await _json(request, "ids")).get("ids")))


async def lab_snapshot(request: web.Request) -> web.Response:
    lab, every = request.app[LAB_KEY], (await _json(request, "every")).get("every")
    if every is None:
        await lab.restore_snapshot_every()
        return web.json_response(lab.describe())
    return web.json_response(await lab.set_snapshot_every(every))


def _flag(body: dict, name: str) -> bool:
    if type(body.get(name)) is not bool:
        raise ControlError(400, f"{name}: true or false", field=name)
    return body[name]


async def tour_start(request: web.Request) -> web.Response:
    body = await _json(request, "demo")
    return web.json_response(request.app[TOUR_KEY].start(str(body.get("demo", "all"))))


async def tour_next(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response(request.app[TOUR_KEY].next())


async def tour_stop(request: web.Request) -> web.Response:
    await _json(request)
    return web.json_response({"stopped": await request.app[TOUR_KEY].stop()})


async def coordination_watch(request: web.Request) -> web.Response:
    body = await _json(request, "prefix", "start_revision")
    return web.json_response(await request.app[COORDINATION_KEY].watch(body.get("prefix", ""),
                                                                        body.get("start_revision")))


async def session_view(request: web.Request) -> web.Response:
    """Who is logged in and what they may do; with the cluster's nodes and the features only for
    someone who may use the controls (anyone while auth is off, else a person logged in)."""
    sessions, hub = request.app[SESSIONS_KEY], request.app[HUB_KEY]
    session = sessions.find(request)
    view = sessions.describe(session)
    if sessions.auth_on is False or session is not None:
        view.update(nodes=hub.node_list(), reach=hub.reach(), supervisor=hub.supervisor is not None,
                    **features(request.app))
    return web.json_response(view, dumps=lambda o: json.dumps(o, default=str))


async def login(request: web.Request) -> web.Response:
    body = await _json(request, "name", "password")
    sessions = request.app[SESSIONS_KEY]
    sid, session = await sessions.login(body.get("name"), body.get("password"))
    resp = web.json_response(sessions.describe(session))
    resp.set_cookie(COOKIE, sid, max_age=SESSION_TTL_S, path="/", httponly=True, samesite="Strict",
                    secure=request.secure)
    return resp


async def logout(request: web.Request) -> web.Response:
    await _json(request)
    request.app[SESSIONS_KEY].logout(request)
    resp = web.json_response({"loggedOut": True})
    resp.del_cookie(COOKIE, path="/")
    return resp


async def trace(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB_KEY]
    resp = web.StreamResponse(headers={
        "Content-Type": "application/x-ndjson",
        "Content-Disposition": 'attachment; filename="raftkv-trace.ndjson"',
    })
    await resp.prepare(request)
    chunk: list[str] = [hub.export_header()]
    for recorded in list(hub.recorder):
        chunk.append(recorded.json)
        if len(chunk) >= 500:
            await resp.write(("\n".join(chunk) + "\n").encode())
            chunk = []
    if chunk:
        await resp.write(("\n".join(chunk) + "\n").encode())
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------------- app and running ---------


async def create_app(node_urls: list[str], supervisor: Any = None, access: Access = NO_ACCESS,
                     here: tuple[str, int] | None = None) -> web.Application:
    """`access`: how the dashboard reaches the nodes (TLS, credentials), on every connection it makes;
    `here`: the host and port it listens on (whether the nodes' traces come here: traces.py)."""
    links = await resolve_ids(node_urls, supervisor, access)
    hub = Hub(links, supervisor, access)
    controls = Controls(hub, supervisor)
    lab = Lab(hub, controls)
    hub.extra_reach = lab.slowmo_info
    app = web.Application(middlewares=[errors, gate], client_max_size=MAX_REQUEST_BYTES)
    app[HUB_KEY], app[CONTROLS_KEY], app[LAB_KEY] = hub, controls, lab
    sessions = app[SESSIONS_KEY] = Sessions(hub)
    membership, load = Membership(hub, controls, lab), LoadGenerator(hub)
    app[LOAD_KEY], app[MEMBERSHIP_KEY] = load, membership
    coordination = app[COORDINATION_KEY] = CoordinationView(hub)
    app[TOUR_KEY] = Tour(hub, controls, lab, membership, load, coordination, DEMOS)
    app[HERE_KEY] = here
    traces = add_trace_routes(app, named=hub.named)  # the nodes' spans, under raftkv up --trace (traces.py)

    async def lifecycle(app: web.Application) -> Any:
        await hub.start()
        await sessions.start()
        await coordination.start()
        announcer = asyncio.create_task(announce(traces, hub.emit, node_environment(supervisor), here))
        yield
        announcer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await announcer
        await sessions.stop()
        await coordination.stop()
        await app[LOAD_KEY].stop()
        await app[TOUR_KEY].stop()
        await lab.leave_quietly()  # the nodes must not go on holding messages nobody will deliver
        await hub.stop()

    app.cleanup_ctx.append(lifecycle)
    r = app.router
    r.add_get("/", index)
    r.add_static("/static", STATIC_DIR)
    r.add_get("/ws", ws_handler)
    r.add_get("/api/state", state)
    r.add_post("/api/nodes/{node}/{op}", node_action)
    r.add_post("/api/members", member_add)
    r.add_post("/api/members/{node}/promote", member_promote)
    r.add_delete("/api/members/{node}", member_remove)
    r.add_post("/api/heal", heal)
    r.add_post("/api/split", split)
    r.add_post("/api/cut", cut)
    r.add_post("/api/link-quality", link_quality)
    r.add_post("/api/kv", kv)
    r.add_post("/api/load", load_start)
    r.add_post("/api/load/stop", load_stop)
    r.add_post("/api/slowmo", slowmo)
    r.add_post("/api/lab", lab_active)
    r.add_post("/api/lab/clock", lab_clock)
    r.add_post("/api/lab/timeout/{node}", lab_timeout)
    r.add_post("/api/lab/rate", lab_rate)
    r.add_post("/api/lab/deliver", lab_deliver)
    r.add_post("/api/lab/drop", lab_drop)
    r.add_post("/api/lab/snapshot", lab_snapshot)
    r.add_post("/api/tour", tour_start)
    r.add_post("/api/tour/next", tour_next)
    r.add_post("/api/tour/stop", tour_stop)
    r.add_post("/api/coordination/watch", coordination_watch)
    r.add_get("/api/trace.ndjson", trace)
    r.add_get("/api/session", session_view)
    r.add_post("/api/login", login)
    r.add_post("/api/logout", logout)
    unclassified = {res.canonical for res in r.resources()} - set(ROUTE_NEEDS)
    assert not unclassified, f"routes with no need in sessions.ROUTE_NEEDS: {sorted(unclassified)}"
    return app


async def serve(host: str, port: int, node_urls: list[str], supervisor: Any = None,
                stop_event: threading.Event | None = None, ready: threading.Event | None = None,
                access: Access = NO_ACCESS) -> None:
    app = await create_app(node_urls, supervisor, access, (host, port))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:  # from here on, cleanup closes the hub's client session even if binding fails
        await web.TCPSite(runner, host, port, reuse_address=True).start()
        log.info("dashboard on http://%s:%d watching %s", host, port, node_urls)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        while not stop.is_set() and not (stop_event is not None and stop_event.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
    finally:
        await runner.cleanup()


def run_dashboard(host: str, port: int, node_urls: list[str], supervisor: Any = None, *,
                  stop_event: threading.Event | None = None, ready: threading.Event | None = None,
                  access: Access = NO_ACCESS) -> None:
    """Serve the dashboard in the foreground; returns after Ctrl-C / SIGTERM (or `stop_event`)."""
    asyncio.run(serve(host, port, list(node_urls), supervisor, stop_event, ready, access))
