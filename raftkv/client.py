"""A small HTTP client for raftkv clusters, used by the CLI, the chaos tool and the benchmarks.

It tries the given endpoints in turn: a connection error moves on to the next endpoint, any HTTP
answer (even an error) is returned as it is, so callers see the cluster's own status codes.

How it reaches the nodes besides their URLs is an `Access`: the TLS it trusts and presents
(raftkv/tls.py) and the credentials it sends, as an `Authorization` header on every request and
every stream it opens (HTTP Basic for a user and password, `Bearer` for a token). Whatever else
talks to nodes over HTTP (the dashboard, `raftkv chaos`, the benchmarks) makes its sessions from
the same `Access`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

from raftkv.byte_text import ESCAPES
from raftkv.tls import ClientTLS

# A stream's silence limit: a node sends a progress notice every 5 s, so three missed ones mean
# the node or the link is gone.
STREAM_SILENCE_S = 15.0
JOIN_TOKEN_TTL_S = 600  # a joining node uses its token once, within seconds of being started


class ClusterUnreachableError(Exception):
    """No endpoint answered. `may_have_arrived`: a request that changes something reached a node
    (its connection broke or timed out after sending), so it may have been applied; it was not
    sent to another node, where it could be applied a second time."""

    def __init__(self, message: str, may_have_arrived: bool = False) -> None:
        super().__init__(message)
        self.may_have_arrived = may_have_arrived


# Requests that change nothing: after one was sent and its answer lost, it may go to another node.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def endpoint_url(text: str) -> str:
    """A node's base URL from what a person typed: `localhost:3000` means http://localhost:3000."""
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def parse_endpoints(text: str) -> list[str]:
    """Comma-separated endpoints (`--endpoints`, RAFTKV_ENDPOINTS) as base URLs."""
    return [endpoint_url(part) for part in text.split(",") if part.strip()]


@dataclass(frozen=True)
class Credentials:
    """Who a client says it is: a user and a password (HTTP Basic), or a bearer token."""

    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if (self.user is None) == (self.token is None):
            raise ValueError("credentials are a user (and password) or a token, one of the two")

    def authorization(self) -> str:
        """The `Authorization` header's value."""
        if self.token is not None:
            return f"Bearer {self.token}"
        assert self.user is not None
        return "Basic " + base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()


@dataclass(frozen=True)
class Access:
    """How a client reaches nodes besides their URLs: the TLS it trusts and presents, and the
    credentials it sends (None: none)."""

    tls: ClientTLS = field(default_factory=ClientTLS)
    credentials: Credentials | None = None

    def headers(self) -> dict[str, str]:
        return {} if self.credentials is None else {"Authorization": self.credentials.authorization()}

    def connector(self, **kwargs: Any) -> aiohttp.TCPConnector:
        """A connector for a session of one's own (kwargs: aiohttp.TCPConnector's, e.g. `limit`)."""
        context = self.tls.context
        return aiohttp.TCPConnector(ssl=context if context is not None else True, **kwargs)

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        """A session that sends each request once (single_send_session), with this TLS and these
        credentials; kwargs are aiohttp.ClientSession's (a `connector` of one's own should come
        from `connector()`)."""
        kwargs.setdefault("connector", self.connector())
        return single_send_session(headers=self.headers(), **kwargs)


NO_ACCESS = Access()  # plain http, or https trusting the system's CAs; no credentials


def single_send_session(**kwargs: Any) -> aiohttp.ClientSession:
    """An aiohttp session that sends each request exactly once.

    aiohttp silently resends an "idempotent" request (GET, PUT, DELETE) on a new connection when
    a persistent one drops (ServerDisconnectedError); if that second connect is refused, the
    caller sees ClientConnectorError, i.e. "never sent", although the first copy was sent and may
    have been applied. A write to raftkv is not idempotent in that sense (a lost answer is an
    unknown outcome, 504, never a safe 503), so the resend is switched off, as aiohttp's own test
    client does; the assertion catches an aiohttp release that renames the switch.
    """
    session = aiohttp.ClientSession(**kwargs)
    assert hasattr(session, "_retry_connection"), "aiohttp changed: check how to disable its resend"
    session._retry_connection = False
    return session


async def join_token(credentials: Credentials | None,
                     ask: Callable[[str, str, Any], Awaitable[tuple[int, Any]]]) -> str | None:
    """A token standing for `credentials`, for a node started to join a cluster that may have auth
    on (`raftkv node --join-token`: a node takes a token, never a password): the token itself, one
    asked for with the user's password (`ask(method, path, body)` on a node), or None without
    credentials, with auth off, or when no token is given (the node's join then says why)."""
    if credentials is None:
        return None
    if credentials.token is not None:
        return credentials.token
    status, answer = await ask("POST", "/auth/token", {"name": credentials.user, "password": credentials.password or "",
                                                       "ttl": JOIN_TOKEN_TTL_S})
    return answer["token"] if status == 200 and isinstance(answer, dict) and "token" in answer else None


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str  # "message" unless the server named it ("progress", "cancelled")
    id: str | None
    data: Any  # decoded JSON


class StreamRefused(Exception):
    """The node answered the stream's request with an error status instead of a stream."""

    def __init__(self, status: int, answer: Any) -> None:
        super().__init__(f"{status}: {answer}")
        self.status, self.answer = status, answer


class WatchCompacted(Exception):
    """The watch asked for history the cluster has compacted away."""


class Client:
    def __init__(self, endpoints: list[str], timeout_s: float = 5.0, access: Access = NO_ACCESS) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = [endpoint_url(e) for e in endpoints]
        self.access = access
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = self.access.session(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, endpoint: str | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) from the first endpoint that answers. A request that
        changes something goes to the next endpoint only if it never reached the last one (its
        connection was refused): an answer lost after sending ends it (ClusterUnreachableError,
        `may_have_arrived`), as etcd's client does not retry a non-repeatable request. An endpoint
        that failed goes to the back of the list, so the next request tries the others first."""
        assert self._session is not None, "use `async with Client(...)`"
        errors = []
        for base in [endpoint] if endpoint else list(self.endpoints):
            try:
                async with self._session.request(
                    method, base + path, json=body if body is not None else None, headers=headers
                ) as resp:
                    text = await resp.text()
                    try:
                        return resp.status, json.loads(text)
                    except ValueError:
                        return resp.status, text
            except (aiohttp.ClientError, TimeoutError) as e:
                errors.append(f"{base}: {type(e).__name__} {e}".strip())
                if endpoint is None and len(self.endpoints) > 1:
                    self.endpoints.remove(base)
                    self.endpoints.append(base)
                sent = not isinstance(e, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
                if sent and method.upper() not in SAFE_METHODS:
                    raise ClusterUnreachableError(
                        "; ".join(errors) + " (the request was sent: it may or may not have been applied)",
                        may_have_arrived=True) from None
        raise ClusterUnreachableError("; ".join(errors))

    async def events(self, path: str, endpoint: str) -> AsyncIterator[ServerSentEvent]:
        """A Server-Sent Events stream from one endpoint, event by event (comments skipped). An
        error status is StreamRefused; a broken or silent connection is ClusterUnreachableError."""
        assert self._session is not None, "use `async with Client(...)`"
        timeout = aiohttp.ClientTimeout(total=None, connect=self._timeout.total, sock_read=STREAM_SILENCE_S)
        try:
            async with self._session.get(endpoint + path, timeout=timeout) as resp:
                if resp.status != 200:
                    text = await resp.text()
                    try:
                        raise StreamRefused(resp.status, json.loads(text))
                    except ValueError:
                        raise StreamRefused(resp.status, text) from None
                fields: dict[str, str] = {}
                async for raw in resp.content:
                    line = raw.decode().rstrip("\r\n")
                    if line:
                        name, _, value = line.partition(":")
                        if name:  # a line starting with ':' is a comment
                            value = value.removeprefix(" ")
                            fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value
                    elif "data" in fields:
                        data = json.loads(fields["data"])
                        yield ServerSentEvent(fields.get("event", "message"), fields.get("id"), data)
                        fields = {}
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ClusterUnreachableError(f"{endpoint}: {type(e).__name__} {e}".strip()) from None

    async def watch(self, *, key: str | None = None, prefix: str | None = None,
                    start_revision: int | None = None, prev_kv: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Each revision's events for KEY or PREFIX, from `start_revision` (None: from now), with no
        gap and no duplicate: a broken stream resumes on the next endpoint that answers, from the
        revision after the last one seen. A watch below the compacted revision raises WatchCompacted."""
        endpoints = self.endpoints
        turn = 0
        next_revision = start_revision
        while True:
            query = {"key": key} if key is not None else {"prefix": prefix}
            if next_revision is not None:
                query["start_revision"] = str(next_revision)
            if prev_kv:
                query["prev_kv"] = "true"
            path = "/watch?" + urlencode(query, quote_via=quote, errors=ESCAPES)
            try:
                async with contextlib.aclosing(self.events(path, endpoints[turn % len(endpoints)])) as stream:
                    async for event in stream:
                        data = event.data
                        if event.event == "cancelled":
                            next_revision = data["resumeRevision"]
                            break  # a slow watcher: resume where it was cut
                        if event.event == "progress":
                            next_revision = max(next_revision or 0, data["revision"] + 1)
                            continue
                        next_revision = data["revision"] + 1
                        yield data
            except StreamRefused as e:
                if e.status == 410:
                    raise WatchCompacted(e.answer.get("error") if isinstance(e.answer, dict) else str(e)) from None
                if e.status < 500:
                    raise
            except ClusterUnreachableError:
                pass
            turn += 1
            await asyncio.sleep(0.2 if turn % len(endpoints) else 1.0)

    async def put(self, key: str, value: Any, **conditions: Any) -> tuple[int, Any]:
        return await self.request("PUT", key_path(key), {"value": value, **conditions})

    async def get(self, key: str, stale: bool = False) -> tuple[int, Any]:
        return await self.request("GET", key_path(key) + ("?stale=true" if stale else ""))

    async def delete(self, key: str) -> tuple[int, Any]:
        return await self.request("DELETE", key_path(key))


def key_path(key: str) -> str:
    """/kv/KEY with the key percent-encoded ('/' kept): a key may hold '?', '#', '%' or spaces, and
    escaped bytes (byte_text.py), which go as the bytes they stand for."""
    return "/kv/" + quote(key, safe="/", errors=ESCAPES)
