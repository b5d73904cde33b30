"""What every client command of `raftkv` shares: where the cluster is, how a request's answer or
failure becomes output and an exit status, and how keys and values are typed on a command line."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

import click

from raftkv.client import Client, ClusterUnreachableError

DEFAULT_ENDPOINTS = "http://127.0.0.1:3000,http://127.0.0.1:3001,http://127.0.0.1:3002"

__all__ = ["DEFAULT_ENDPOINTS", "call", "echo_table", "endpoints_option", "fail", "key_path", "parse_value", "run"]


def endpoints_option(fn: Any) -> Any:
    return click.option(
        "--endpoints",
        default=lambda: os.environ.get("RAFTKV_ENDPOINTS", DEFAULT_ENDPOINTS),
        show_default="RAFTKV_ENDPOINTS or the local cluster",
        help="Comma-separated node URLs.",
    )(fn)


def call(
    endpoints: list[str],
    method: str,
    path: str,
    body: Any = None,
    unreachable: str | None = None,
    timeout_s: float = 5.0,
) -> Any:
    """The decoded answer; an unreachable cluster (said as `unreachable`, when given) or an error
    status ends the command (exit 1)."""

    async def go() -> tuple[int, Any]:
        async with Client(endpoints, timeout_s=timeout_s) as c:
            return await c.request(method, path, body)

    return run(go, unreachable)


def run(go: Callable[[], Coroutine[Any, Any, tuple[int, Any]]], unreachable: str | None = None) -> Any:
    """The answer of `go` (status, decoded body), unless the cluster is unreachable or answers an
    error status: then the command ends with what it said (exit 1)."""
    try:
        status, data = asyncio.run(go())
    except ClusterUnreachableError as e:
        raise click.ClickException(unreachable or f"no endpoint answered: {e}") from None
    if status >= 400:
        fail(status, data)
    return data


def fail(status: int, data: Any) -> None:
    """End the command with a node's error answer (exit 1)."""
    message = data.get("error", data) if isinstance(data, dict) else data
    reason = f" ({data['reason']})" if isinstance(data, dict) and "reason" in data else ""
    click.echo(f"error {status}{reason}: {message}", err=True)
    sys.exit(1)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string


def key_path(key: str) -> str:
    """/kv/KEY with the key percent-encoded ('/' kept): a key may hold '?', '#', '%' or spaces."""
    return "/kv/" + quote(key, safe="/")


def echo_table(header: list[str], rows: list[list[str]]) -> None:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
