"""What every client command of `raftkv` shares: where the cluster is and how to reach it, how a
request's answer or failure becomes output and an exit status, and how keys and values are typed
on a command line.

Where and how: `connection_options` gives a command `--endpoints` and the options of a secure
connection (`--cacert`, `--cert`, `--key`, `--user`, `--token`, each also from a RAFTKV_*
environment variable) and hands it one `Connection`, from which it makes its clients;
`access_options` gives only the latter, as one `Access` (`raftkv chaos`, whose `--endpoints` is
its own).
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from raftkv.client import NO_ACCESS, Access, Client, ClusterUnreachableError, Credentials, parse_endpoints
from raftkv.tls import ClientTLS, TLSFileError

DEFAULT_ENDPOINTS = "http://127.0.0.1:3000,http://127.0.0.1:3001,http://127.0.0.1:3002"
UNAUTHENTICATED = "authentication required: pass --user or --token"

__all__ = ["DEFAULT_ENDPOINTS", "Connection", "access_options", "call", "connection_options", "echo_table", "fail",
           "parse_value", "run"]


@dataclass(frozen=True)
class Connection:
    """The nodes a command talks to, and how: TLS and credentials."""

    endpoints: list[str]
    access: Access = field(default=NO_ACCESS)

    def client(self, timeout_s: float = 5.0) -> Client:
        return Client(self.endpoints, timeout_s=timeout_s, access=self.access)


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_ENDPOINTS_OPTION = click.option(
    "--endpoints", default=lambda: os.environ.get("RAFTKV_ENDPOINTS", DEFAULT_ENDPOINTS),
    show_default="RAFTKV_ENDPOINTS or the local cluster", help="Comma-separated node URLs.")
_ACCESS_OPTIONS = [
    click.option("--cacert", "cacert_file", type=_FILE, envvar="RAFTKV_CACERT", show_envvar=True,
                 help="Trust the nodes' certificates this CA signed (https endpoints; default: the system's CAs)."),
    click.option("--cert", "cert_file", type=_FILE, envvar="RAFTKV_CERT", show_envvar=True,
                 help="Client certificate, for nodes that require one (its key in it, or --key)."),
    click.option("--key", "key_file", type=_FILE, envvar="RAFTKV_KEY", show_envvar=True,
                 help="The client certificate's key."),
    click.option("--user", "auth_user", envvar="RAFTKV_USER", show_envvar=True, metavar="NAME[:PASSWORD]",
                 help="Authenticate as this user (HTTP Basic). Without a password: RAFTKV_PASSWORD, else asked "
                 "for on a terminal."),
    click.option("--token", "auth_token", envvar="RAFTKV_TOKEN", show_envvar=True,
                 help="Authenticate with this bearer token."),
]


def connection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a click command --endpoints and the access options; it receives them as one
    `conn: Connection`."""

    @functools.wraps(fn)
    def with_connection(*args: Any, endpoints: str, connection_access: Access, **kwargs: Any) -> Any:
        return fn(*args, conn=Connection(parse_endpoints(endpoints), connection_access), **kwargs)

    return _ENDPOINTS_OPTION(_with_access(with_connection, "connection_access"))


def access_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give a click command the TLS and credential options; it receives them as one `access: Access`."""
    return _with_access(fn, "access")


def _with_access(fn: Callable[..., Any], keyword: str) -> Callable[..., Any]:
    """The access options on `fn`, which receives them as one Access under `keyword`. Their own
    parameters' names are their own, so that a command's KEY argument and --key, or its ACCESS
    argument (`raftkv role grant`) and a connection's Access, do not meet."""

    @functools.wraps(fn)
    def with_access(*args: Any, cacert_file: Path | None, cert_file: Path | None, key_file: Path | None,
                    auth_user: str | None, auth_token: str | None, **kwargs: Any) -> Any:
        return fn(*args, **{keyword: access_of(cacert_file, cert_file, key_file, auth_user, auth_token)}, **kwargs)

    for option in reversed(_ACCESS_OPTIONS):
        with_access = option(with_access)
    return with_access


def access_of(cacert: Path | None = None, cert: Path | None = None, key: Path | None = None,
              user: str | None = None, token: str | None = None) -> Access:
    """An Access from the options' values; a usage error when they do not go together, or a
    certificate cannot be used."""
    if user is not None and token is not None:
        raise click.UsageError("give --user or --token, not both")
    credentials = None
    if token is not None:
        credentials = Credentials(token=token)
    elif user is not None:
        name, colon, password = user.partition(":")
        if not name:
            raise click.UsageError("--user: expected NAME or NAME:PASSWORD")
        credentials = Credentials(name, password if colon else _password(name))
    try:
        tls = ClientTLS(cacert, cert, key)
        _ = tls.context  # an unusable file is said now, once, not as every endpoint's failure
    except TLSFileError as e:
        raise click.UsageError(str(e)) from None
    return Access(tls, credentials)


def _password(user: str) -> str:
    """The password of --user NAME: RAFTKV_PASSWORD, else typed (hidden) at a terminal."""
    if (password := os.environ.get("RAFTKV_PASSWORD")) is not None:
        return password
    if not sys.stdin.isatty():
        raise click.UsageError(f"--user {user}: no password (give --user {user}:PASSWORD or set RAFTKV_PASSWORD; "
                               "it is asked for only on a terminal)")
    return click.prompt(f"password for {user}", hide_input=True, err=True)


def call(
    conn: Connection,
    method: str,
    path: str,
    body: Any = None,
    unreachable: str | None = None,
    timeout_s: float = 5.0,
) -> Any:
    """The decoded answer; an unreachable cluster (said as `unreachable`, when given) or an error
    status ends the command (exit 1)."""

    async def go() -> tuple[int, Any]:
        async with conn.client(timeout_s) as c:
            return await c.request(method, path, body)

    return run(go, unreachable)


def run(go: Callable[[], Coroutine[Any, Any, tuple[int, Any]]], unreachable: str | None = None) -> Any:
    """The answer of `go` (status, decoded body), unless the cluster is unreachable or answers an
    error status: then the command ends with what it said (exit 1)."""
    try:
        status, data = asyncio.run(go())
    except ClusterUnreachableError as e:
        if e.may_have_arrived:  # not "unreachable": the request got there, its answer did not come back
            raise click.ClickException(f"no answer: {e}") from None
        raise click.ClickException(unreachable or f"no endpoint answered: {e}") from None
    if status >= 400:
        fail(status, data)
    return data


def fail(status: int, data: Any) -> None:
    """End the command with a node's error answer (exit 1); a 401 says how to authenticate."""
    if status == 401:
        said = data.get("error") if isinstance(data, dict) else None
        click.echo(f"error 401: {UNAUTHENTICATED}" + (f" ({said})" if said else ""), err=True)
        sys.exit(1)
    message = data.get("error", data) if isinstance(data, dict) else data
    reason = f" ({data['reason']})" if isinstance(data, dict) and "reason" in data else ""
    click.echo(f"error {status}{reason}: {message}", err=True)
    sys.exit(1)


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text  # a bare word is a string


def echo_table(header: list[str], rows: list[list[str]]) -> None:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for r in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())
