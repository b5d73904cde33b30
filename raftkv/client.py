"""A small HTTP client for raftkv clusters, used by the CLI, the chaos tool and the benchmarks.

It tries the given endpoints in turn: a connection error moves on to the next endpoint, any HTTP
answer (even an error) is returned as it is, so callers see the cluster's own status codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

# A stream's silence limit: a node sends a progress notice every 5 s, so three missed ones mean
# the node or the link is gone.
STREAM_SILENCE_S = 15.0


class ClusterUnreachableError(Exception):
    pass


def endpoint_url(text: str) -> str:
    """A node's base URL from what a person typed: `localhost:3000` means http://localhost:3000."""
    text = text.strip().rstrip("/")
    return text if "://" in text else f"http://{text}"


def parse_endpoints(text: str) -> list[str]:
    """Comma-separated endpoints (`--endpoints`, RAFTKV_ENDPOINTS) as base URLs."""
    return [endpoint_url(part) for part in text.split(",") if part.strip()]


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
    def __init__(self, endpoints: list[str], timeout_s: float = 5.0) -> None:
        if not endpoints:
            raise ValueError("no endpoints")
        self.endpoints = [endpoint_url(e) for e in endpoints]
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self._session = single_send_session(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, method: str, path: str, body: Any = None, endpoint: str | None = None, headers: dict | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or text) from the first endpoint that answers."""
        assert self._session is not None, "use `async with Client(...)`"
        errors = []
        for base in [endpoint] if endpoint else self.endpoints:
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
            path = "/watch?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in query.items())
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
        return await self.request("PUT", f"/kv/{key}", {"value": value, **conditions})

    async def get(self, key: str, stale: bool = False) -> tuple[int, Any]:
        return await self.request("GET", f"/kv/{key}" + ("?stale=true" if stale else ""))

    async def delete(self, key: str) -> tuple[int, Any]:
        return await self.request("DELETE", f"/kv/{key}")
