"""Who is at the browser: logging in to the dashboard, and what that person may do.

Theory of operation
-------------------
The dashboard server reaches the nodes with credentials of its own (`raftkv dashboard --user` or
`--token`), and watches the cluster with them (hub.py). It must not lend them to whoever opens the
page. While the nodes have auth on:

* a person logs in on the page with a name and a password. The server asks a node for a token
  (`POST /auth/token`) and keeps it in a server-side `Session`, named by a random id in a cookie
  (HttpOnly, SameSite=Strict); the cookie holds the id only, and the password is not kept;
* every node call a browser request causes (a write, a partition, the lab, a tour, the load) is
  made for that person: `admit` returns whom the request acts for, the server puts it in
  `hub.ACTING_FOR`, tasks the request starts inherit it, and the call carries that person's
  token, so the nodes' own permission checks apply to them. A browser nobody logged in on is
  refused (401) before any node is asked, and its calls would carry no credentials at all;
* what the dashboard shows of its own watching (the /ws stream, /api/state, the trace export)
  holds every key's writes, so it is served only to a person who may read every key
  (`readsEveryKey` in `GET /auth/status` with their token). That is asked again every `RECHECK_S`
  while their stream is open: a stream whose person lost the right, logged out, or whose token
  ended, is closed with the reason;
* what only the dashboard does, without a node to check it (the supervisor's crash, pause and
  restart, starting a new node, the tours, which do all of that), needs the admin permission,
  asked with the person's token at the time.

`ROUTE_NEEDS` classifies every route of the dashboard (the server asserts none is left out).
Whether the nodes have auth on is read from `GET /auth/status` every `AUTH_POLL_S`; until the
dashboard has heard, it acts as if it were on. While auth is off nothing changes: no login, and
node calls for a browser carry no credentials (the nodes check none).

`abilities()` says in words what a person may not do, from the permissions a node reported for
them; the page greys those controls and shows why.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import aiohttp
from aiohttp import web

from raftkv.client import Credentials

from .controls import ControlError
from .hub import NOBODY, Acting, Hub, NodeLink

__all__ = ["COOKIE", "ROUTE_NEEDS", "Need", "Session", "Sessions", "abilities"]

log = logging.getLogger("raftkv.dashboard")

COOKIE = "raftkv_dashboard_session"
SESSION_TTL_S = 8 * 3600  # the token asked for on login lives this long, and so does the session
MAX_SESSIONS = 256  # the oldest is forgotten past this
LOGINS_AT_ONCE = 2  # a node spends tens of ms of one core checking a password
MAX_NAME_CHARS, MAX_PASSWORD_CHARS = 64, 1024  # the nodes' own bounds (kv/auth.py, api/auth.py)
AUTH_POLL_S = 1.0
RECHECK_S = 5.0  # an open stream's person (or one whose page asked lately) is asked about again this often
SEEN_LATELY_S = 30.0  # a page asks for its session every 5 s: a session not seen this long has no page open
NODE_TIMEOUT_S = 3.0
WS_CLOSE_REASON_BYTES = 120  # a WebSocket close reason holds at most 123 bytes


class Need(Enum):
    OPEN = "open"  # the page itself, and logging in: nothing from the cluster
    OBSERVE = "observe"  # the dashboard's view of every key's writes: a person who may read every key
    ACT = "act"  # node calls made with the person's token: the nodes decide
    ADMIN = "admin"  # what the dashboard does without a node to check it: the admin permission


ROUTE_NEEDS: dict[str, Need] = {
    "/": Need.OPEN, "/static": Need.OPEN,
    "/api/session": Need.OPEN, "/api/login": Need.OPEN, "/api/logout": Need.OPEN,
    "/ws": Need.OBSERVE, "/api/state": Need.OBSERVE, "/api/trace.ndjson": Need.OBSERVE,
    "/api/coordination/watch": Need.OBSERVE,  # what the watch feed (on the stream) follows
    # the nodes post their spans (only from this machine: traces.py); reading them shows keys
    "/v1/traces": Need.OPEN, "/api/traces": Need.OBSERVE, "/api/traces/{trace_id}": Need.OBSERVE,
    # crash, pause and restart go to the supervisor: the handler asks for admin for those ops
    "/api/nodes/{node}/{op}": Need.ACT,
    "/api/members": Need.ADMIN,  # POST: the supervisor starts a new node process
    "/api/members/{node}/promote": Need.ACT, "/api/members/{node}": Need.ACT,
    "/api/heal": Need.ACT, "/api/split": Need.ACT, "/api/cut": Need.ACT, "/api/link-quality": Need.ACT,
    "/api/kv": Need.ACT, "/api/load": Need.ACT, "/api/load/stop": Need.ACT, "/api/slowmo": Need.ACT,
    "/api/lab": Need.ACT, "/api/lab/clock": Need.ACT, "/api/lab/timeout/{node}": Need.ACT,
    "/api/lab/rate": Need.ACT, "/api/lab/deliver": Need.ACT, "/api/lab/drop": Need.ACT,
    "/api/lab/snapshot": Need.ACT,
    "/api/tour": Need.ADMIN, "/api/tour/next": Need.ADMIN, "/api/tour/stop": Need.ADMIN,
}
LOAD_PREFIX = "load-"  # the keys the load generator writes (load.py)


@dataclass(eq=False)
class Session:
    user: str
    credentials: Credentials = field(repr=False)  # the token a node issued at login
    expires_at: float  # wall time, as the node said
    status: dict[str, Any]  # the node's GET /auth/status for this person
    checked_at: float  # monotonic time `status` was read
    seen_at: float = field(default_factory=time.monotonic)  # the last request that carried its cookie
    sockets: set[web.WebSocketResponse] = field(default_factory=set)

    @property
    def acting(self) -> Acting:
        return Acting(self.user, self.credentials)

    def expired(self) -> bool:
        return time.time() >= self.expires_at


class Sessions:
    """The logged-in people of one dashboard server, and whether the nodes have auth on."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.auth_on: bool | None = None  # None: not heard yet (treated as on)
        self._sessions: OrderedDict[bytes, Session] = OrderedDict()  # by the digest of the cookie's id
        self._anonymous: set[web.WebSocketResponse] = set()  # streams opened while auth was off
        self._logins = asyncio.Semaphore(LOGINS_AT_ONCE)
        self._task: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle ---------------

    async def start(self) -> None:
        await self.poll_auth()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # ------------------------------------------------------------------ a request's person ------

    def find(self, request: web.Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        if not sid:
            return None
        digest = _digest(sid)
        session = self._sessions.get(digest)
        if session is not None and session.expired():
            self._end(digest, "your login expired: log in again")
            return None
        if session is not None:
            session.seen_at = time.monotonic()
        return session

    async def admit(self, request: web.Request, need: Need) -> Acting:
        """Whom the request acts for; ControlError 401 (nobody logged in while auth is on) or 403."""
        session = self.find(request)
        if need is Need.OPEN or self.auth_on is False:
            return session.acting if session is not None else NOBODY
        if session is None:
            raise ControlError(401, "log in first: the nodes have auth on, and the dashboard acts only for a person "
                                    "logged in", reason="login_required")
        if need is Need.OBSERVE:
            if time.monotonic() - session.checked_at > RECHECK_S or request.path == "/ws":
                await self.recheck(session)
            why = abilities(session.status)["view"]
            if why is not None:
                raise ControlError(403, f"the live view is hidden: {why}", reason="live_view_hidden")
        elif need is Need.ADMIN:
            await self.require_admin(session)
        return session.acting

    async def require_admin(self, session: Session | None) -> None:
        """403 unless the person has the admin permission (asked of a node now); nothing while auth is off."""
        if self.auth_on is False:
            return
        if session is None:
            raise ControlError(401, "log in first: the nodes have auth on", reason="login_required")
        await self.recheck(session)
        why = abilities(session.status)["admin"]
        if why is not None:
            raise ControlError(403, f"this {why}", reason="permission_denied")

    async def recheck(self, session: Session) -> None:
        """The person's permissions as a node says now; a token the nodes no longer take ends the
        session (401). A cluster that does not answer leaves the last known status."""
        status, answer = await self._ask("GET", "/auth/status", headers=session.acting.headers())
        if status == 200 and isinstance(answer, dict) and answer.get("user"):
            session.status, session.checked_at = answer, time.monotonic()
        elif status == 200 and isinstance(answer, dict) and answer.get("enabled") is False:
            self.auth_on = False  # auth went off: the session holds nothing any more
        elif status == 401:
            said = answer.get("error") if isinstance(answer, dict) else None
            why = f"your login ended ({said}): log in again" if said else "your login ended: log in again"
            self._end_session(session, why)
            raise ControlError(401, why, reason="login_required")

    # ------------------------------------------------------------------ logging in and out ------

    async def login(self, name: Any, password: Any) -> tuple[str, Session]:
        """A new session for NAME, if a node takes the password: (the cookie's id, the session)."""
        if type(name) is not str or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ControlError(400, f"name: 1 to {MAX_NAME_CHARS} characters", field="name")
        if type(password) is not str or not 1 <= len(password) <= MAX_PASSWORD_CHARS:
            raise ControlError(400, f"password: 1 to {MAX_PASSWORD_CHARS} characters", field="password")
        async with self._logins:
            status, answer = await self._ask("POST", "/auth/token",
                                             {"name": name, "password": password, "ttl": SESSION_TTL_S})
        said = answer.get("error") if isinstance(answer, dict) else str(answer)
        if status == 401:
            raise ControlError(401, f"login refused: {said}", reason="login_failed")
        if status == 409:
            self.auth_on = False
            raise ControlError(409, "the nodes have auth off: there is nothing to log in to, the dashboard "
                                    "works without", reason="auth_disabled")
        if status != 200 or not isinstance(answer, dict) or "token" not in answer:
            raise ControlError(502 if status < 400 else status, f"login failed: {said}")
        self.auth_on = True
        credentials = Credentials(token=answer["token"])
        status, view = await self._ask("GET", "/auth/status", headers=Acting(name, credentials).headers())
        if status != 200 or not isinstance(view, dict) or not view.get("user"):
            raise ControlError(502, f"logged in, but the nodes did not say what {name} may do ({status})")
        sid = secrets.token_urlsafe(32)
        session = Session(view["user"], credentials, float(answer.get("expiresAt") or time.time() + SESSION_TTL_S),
                          view, time.monotonic())
        self._sessions[_digest(sid)] = session
        while len(self._sessions) > MAX_SESSIONS:
            digest = next(iter(self._sessions))
            self._end(digest, "too many people logged in on this dashboard: log in again")
        log.info("dashboard: %s logged in", session.user)
        return sid, session

    def logout(self, request: web.Request) -> None:
        sid = request.cookies.get(COOKIE)
        if sid:
            self._end(_digest(sid), "you logged out")

    def _end(self, digest: bytes, why: str) -> None:
        session = self._sessions.pop(digest, None)
        if session is not None:
            self._close_all(session.sockets, 4401, why)

    def _end_session(self, session: Session, why: str) -> None:
        digest = next((d for d, s in self._sessions.items() if s is session), None)
        if digest is not None:
            self._end(digest, why)

    # ------------------------------------------------------------------ what the page is told ---

    def describe(self, session: Session | None) -> dict[str, Any]:
        """The page's view of who is logged in and what they may do (nothing of the cluster)."""
        auth_on = self.auth_on is not False
        if not auth_on:
            return {"auth": {"enabled": False}, "user": None, "may": {}, "view": {"shown": True, "why": None}}
        if session is None:
            why = ("log in to see the cluster: the nodes have auth on" if self.auth_on else "the dashboard has not "
                   "heard from the nodes whether they have auth on, and shows nothing until it has")
            return {"auth": {"enabled": self.auth_on}, "user": None, "may": {}, "view": {"shown": False, "why": why}}
        st, may = session.status, abilities(session.status)
        return {"auth": {"enabled": True},
                "user": {"name": session.user, "roles": st.get("roles", []), "admin": bool(st.get("admin")),
                         "readsEveryKey": bool(st.get("readsEveryKey")), "permissions": st.get("permissions", []),
                         "expiresAt": session.expires_at},
                "may": may, "view": {"shown": may["view"] is None, "why": may["view"]}}

    # ------------------------------------------------------------------ streams -----------------

    @contextlib.asynccontextmanager
    async def streaming(self, ws: web.WebSocketResponse, session: Session | None) -> AsyncIterator[None]:
        """While a page's stream is open: closed if its person may no longer see it."""
        held = session.sockets if session is not None and self.auth_on is not False else self._anonymous
        held.add(ws)
        try:
            yield
        finally:
            held.discard(ws)

    async def _watch(self) -> None:
        last_recheck = time.monotonic()
        while True:
            await asyncio.sleep(AUTH_POLL_S)
            was = self.auth_on
            await self.poll_auth()
            if self.auth_on is not False and was is False and self._anonymous:
                self._close_all(self._anonymous, 4401, "the nodes turned auth on: log in to see the cluster")
            if time.monotonic() - last_recheck >= RECHECK_S:
                last_recheck = time.monotonic()
                await self._recheck_streams()

    async def _recheck_streams(self) -> None:
        """Each session with a page open asked about again: a page greys what its person may no
        longer do, and a stream they may no longer see is closed."""
        lately = time.monotonic() - SEEN_LATELY_S
        for digest, session in list(self._sessions.items()):
            if session.expired():
                self._end(digest, "your login expired: log in again")
            elif (session.sockets or session.seen_at > lately) and self.auth_on is not False:
                with contextlib.suppress(ControlError):  # a 401 ended the session and closed its streams
                    await self.recheck(session)
                    why = abilities(session.status)["view"]
                    if why is not None:
                        self._close_all(session.sockets, 4403, f"the live view is hidden: {why}")

    def _close_all(self, sockets: set[web.WebSocketResponse], code: int, why: str) -> None:
        message = why.encode()[:WS_CLOSE_REASON_BYTES]
        for ws in list(sockets):
            sockets.discard(ws)
            asyncio.get_running_loop().create_task(ws.close(code=code, message=message))

    # ------------------------------------------------------------------ asking the nodes --------

    async def poll_auth(self) -> None:
        """Whether the nodes have auth on (GET /auth/status, open to anyone); unchanged if none answers."""
        status, answer = await self._ask("GET", "/auth/status")
        if status == 200 and isinstance(answer, dict) and isinstance(answer.get("enabled"), bool):
            self.auth_on = answer["enabled"]

    async def _ask(self, method: str, path: str, body: Any = None,
                   headers: dict[str, str] | None = None) -> tuple[int, Any]:
        """The answer of the first member that answers (the leader, then the reachable ones first).
        Sent on the hub's session without credentials of its own: only `headers`' are sent."""
        for link in self._asked():
            try:
                async with self.hub.action_session.request(
                        method, link.url.rstrip("/") + path, json=body, headers=headers or {},
                        timeout=aiohttp.ClientTimeout(total=NODE_TIMEOUT_S)) as resp:
                    text = await resp.text()
                    try:
                        return resp.status, json.loads(text) if text else None
                    except ValueError:
                        return resp.status, text
            except (aiohttp.ClientError, OSError, TimeoutError):
                continue
        return 503, {"error": "no node of the cluster answers the dashboard"}

    def _asked(self) -> list[NodeLink]:
        now = time.time()
        return sorted(self.hub.members(), key=lambda n: (n.reach(now) != "ok",
                                                         (n.status or {}).get("state") != "leader"))


def _digest(sid: str) -> bytes:
    return hashlib.sha256(sid.encode()).digest()


def abilities(status: dict[str, Any]) -> dict[str, Any]:
    """What the person a node's GET /auth/status describes may not do, in words for the page (None:
    they may), and whether they may only look."""
    user = status.get("user", "?")
    perms = status.get("permissions") or []
    admin = bool(status.get("admin"))
    writes = [p for p in perms if p.get("access") in ("write", "readwrite")]
    every_key = any(p.get("prefix") and p.get("key") == "" for p in writes)
    load = any(p.get("prefix") and LOAD_PREFIX.startswith(p.get("key", "")) for p in writes)
    return {
        "admin": None if admin else f"needs the admin permission, which your user {user} does not have",
        "write": None if writes else f"your user {user} may not write any key",
        "writeScope": None if every_key or not writes else f"your user {user} {_write_scope(writes)}",
        "load": None if load else f"the load generator writes the keys {LOAD_PREFIX}…, and your user {user} may "
                                  "not write them",
        "view": None if status.get("readsEveryKey") else f"it shows every key's writes, and your user {user} may "
                                                         "not read every key",
        "readOnly": not writes and not admin,
    }


def _write_scope(writes: list[dict[str, Any]]) -> str:
    prefixes = sorted({p["key"] for p in writes if p.get("prefix")})
    keys = sorted({p["key"] for p in writes if not p.get("prefix")})
    if not keys:
        return "may not write keys outside " + " and ".join(prefixes)
    return "may write only " + ", ".join([*(f"the keys under {p}" for p in prefixes), *(f"the key {k}" for k in keys)])
