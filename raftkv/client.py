"""A small HTTP client for raftkv clusters, used by the CLI, the chaos tool and the benchmarks.

It tries the given endpoints in turn: a connection error moves on to the next endpoint, any HTTP
answer (even an error) is returned as it is, so callers see the cluster's own status codes.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp


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

    async def put(self, key: str, value: Any, **conditions: Any) -> tuple[int, Any]:
        return await self.request("PUT", f"/kv/{key}", {"value": value, **conditions})

    async def get(self, key: str, stale: bool = False) -> tuple[int, Any]:
        return await self.request("GET", f"/kv/{key}" + ("?stale=true" if stale else ""))

    async def delete(self, key: str) -> tuple[int, Any]:
        return await self.request("DELETE", f"/kv/{key}")
