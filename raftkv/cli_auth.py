"""`raftkv auth ...`, `raftkv user ...` and `raftkv role ...`: users, roles and the auth switch, as
etcdctl's commands of the same names (the rules are in raftkv/kv/auth.py).

Set-up goes as in etcd: add a user named root (and others, and roles) while auth is off, then
`raftkv auth enable`; from then on every command needs `--user NAME[:PASSWORD]` or `--token`.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from urllib.parse import quote

import click

from raftkv.cli_support import Connection, call, connection_options, echo_table

__all__ = ["auth", "role", "user"]

ACCESS_CHOICES = click.Choice(["read", "write", "readwrite", "admin"])


def _segment(name: str) -> str:
    return quote(name, safe="")


# ---------------------------------------------------------------------- auth -----------------------

@click.group()
def auth() -> None:
    """Turn authentication on or off, see whether it is on, or get a token."""


@auth.command("enable")
@connection_options
def auth_enable(conn: Connection) -> None:
    """Turn authentication on (needs a user named root: `raftkv user add root`)."""
    call(conn, "POST", "/auth/enable")
    click.echo("Authentication enabled: every command now needs --user or --token")


@auth.command("disable")
@connection_options
def auth_disable(conn: Connection) -> None:
    """Turn authentication off (needs the admin permission)."""
    call(conn, "POST", "/auth/disable")
    click.echo("Authentication disabled")


@auth.command("status")
@connection_options
def auth_status(conn: Connection) -> None:
    """Whether authentication is on, and who --user or --token names."""
    answer = call(conn, "GET", "/auth/status")
    click.echo(f"Authentication: {'enabled' if answer['enabled'] else 'disabled'}")
    if "user" in answer:
        click.echo(f"User: {answer['user']} (roles: {', '.join(answer['roles']) or 'none'}; "
                   f"admin: {'yes' if answer['admin'] else 'no'})")


@auth.command("token")
@connection_options
@click.option("--ttl", type=click.IntRange(1, 24 * 3600), default=600, show_default=True,
              help="Seconds the token is valid.")
def auth_token(conn: Connection, ttl: int) -> None:
    """Print a bearer token for --user, for RAFTKV_TOKEN or --token."""
    credentials = conn.access.credentials
    if credentials is None or credentials.user is None:
        raise click.UsageError("give --user NAME[:PASSWORD]: the token is that user's")
    body = {"name": credentials.user, "password": credentials.password, "ttl": ttl}
    click.echo(call(conn, "POST", "/auth/token", body)["token"])


# ---------------------------------------------------------------------- user -----------------------

@click.group()
def user() -> None:
    """Add, list, delete users; set their passwords and roles."""


def _new_password(name_and_password: str, from_stdin: bool) -> tuple[str, str]:
    """NAME and its new password: NAME:PASSWORD, a line of standard input, or typed twice."""
    name, colon, password = name_and_password.partition(":")
    if colon:
        return name, password
    if from_stdin:
        return name, sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise click.UsageError(f"no password for {name}: give {name}:PASSWORD or --password-stdin")
    return name, click.prompt(f"new password for {name}", hide_input=True, confirmation_prompt=True, err=True)


@user.command("add")
@connection_options
@click.argument("name_and_password", metavar="NAME[:PASSWORD]")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def user_add(conn: Connection, name_and_password: str, password_stdin: bool) -> None:
    """Add a user (without a password given, it is asked for twice on a terminal)."""
    name, password = _new_password(name_and_password, password_stdin)
    call(conn, "PUT", f"/auth/users/{_segment(name)}", {"password": password})
    click.echo(f"User {name} added")


@user.command("passwd")
@connection_options
@click.argument("name_and_password", metavar="NAME[:PASSWORD]")
@click.option("--password-stdin", is_flag=True, help="Read the password from the first line of standard input.")
def user_passwd(conn: Connection, name_and_password: str, password_stdin: bool) -> None:
    """Change a user's password (yours, or anyone's with the admin permission); their older
    tokens stop working."""
    name, password = _new_password(name_and_password, password_stdin)
    call(conn, "POST", f"/auth/users/{_segment(name)}/password", {"password": password})
    click.echo(f"Password of {name} changed")


@user.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def user_list(conn: Connection, as_json: bool) -> None:
    """Every user and their roles."""
    _listing(conn, "users", as_json, ["USER", "ROLES"], lambda u: [u["name"], ", ".join(u["roles"])])


@user.command("delete")
@connection_options
@click.argument("name")
def user_delete(conn: Connection, name: str) -> None:
    """Delete a user (their tokens stop working)."""
    call(conn, "DELETE", f"/auth/users/{_segment(name)}")
    click.echo(f"User {name} deleted")


@user.command("grant-role")
@connection_options
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
def user_grant_role(conn: Connection, name: str, role_name: str) -> None:
    """Give a user a role (root: every permission)."""
    call(conn, "PUT", f"/auth/users/{_segment(name)}/roles/{_segment(role_name)}")
    click.echo(f"Role {role_name} granted to {name}")


@user.command("revoke-role")
@connection_options
@click.argument("name")
@click.argument("role_name", metavar="ROLE")
def user_revoke_role(conn: Connection, name: str, role_name: str) -> None:
    """Take a role from a user."""
    call(conn, "DELETE", f"/auth/users/{_segment(name)}/roles/{_segment(role_name)}")
    click.echo(f"Role {role_name} revoked from {name}")


# ---------------------------------------------------------------------- role -----------------------

@click.group()
def role() -> None:
    """Add, list, delete roles; grant and revoke their permissions."""


@role.command("add")
@connection_options
@click.argument("name")
def role_add(conn: Connection, name: str) -> None:
    """Add a role, with no permission yet."""
    call(conn, "PUT", f"/auth/roles/{_segment(name)}")
    click.echo(f"Role {name} added")


@role.command("delete")
@connection_options
@click.argument("name")
def role_delete(conn: Connection, name: str) -> None:
    """Delete a role (its users lose it)."""
    call(conn, "DELETE", f"/auth/roles/{_segment(name)}")
    click.echo(f"Role {name} deleted")


@role.command("list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def role_list(conn: Connection, as_json: bool) -> None:
    """Every role and its permissions."""
    _listing(conn, "roles", as_json, ["ROLE", "PERMISSIONS"],
             lambda r: [r["name"], "; ".join(map(_described, r["permissions"]))])


def _listing(conn: Connection, what: str, as_json: bool, header: list[str], row: Callable[[dict], list[str]]) -> None:
    """GET /auth/<what>, printed as JSON or as a table of one row per item."""
    items = call(conn, "GET", f"/auth/{what}")[what]
    if as_json:
        click.echo(json.dumps(items))
        return
    echo_table(header, [row(item) for item in items])


def _described(permission: dict) -> str:
    if permission["access"] == "admin":
        return "admin"
    where = "every key" if permission["prefix"] and not permission["key"] else (
        f"keys under {permission['key']}" if permission["prefix"] else permission["key"])
    return f"{permission['access']} {where}"


def _permission(access: str, key: str | None, prefix: bool) -> dict:
    if access == "admin":
        if key is not None or prefix:
            raise click.UsageError("admin names no key")
        return {"access": access}
    if key is None:
        raise click.UsageError(f"{access} needs a KEY (with --prefix, every key under it; --prefix '' is all)")
    return {"access": access, "key": key, "prefix": prefix}


@role.command("grant")
@connection_options
@click.argument("name")
@click.argument("access", type=ACCESS_CHOICES)
@click.argument("key", required=False)
@click.option("--prefix", is_flag=True, help="Every key that starts with KEY (an empty KEY: every key).")
def role_grant(conn: Connection, name: str, access: str, key: str | None, prefix: bool) -> None:
    """Grant ACCESS on KEY (or every key under it) to a role; `admin` takes no key."""
    permission = _permission(access, key, prefix)
    call(conn, "POST", f"/auth/roles/{_segment(name)}/permissions", permission)
    click.echo(f"Role {name} may now {_described({'prefix': False, **permission})}")


@role.command("revoke")
@connection_options
@click.argument("name")
@click.argument("access", type=ACCESS_CHOICES)
@click.argument("key", required=False)
@click.option("--prefix", is_flag=True, help="The permission was granted with --prefix.")
def role_revoke(conn: Connection, name: str, access: str, key: str | None, prefix: bool) -> None:
    """Revoke a permission from a role, as it was granted."""
    permission = _permission(access, key, prefix)
    call(conn, "DELETE", f"/auth/roles/{_segment(name)}/permissions", permission)
    click.echo(f"Role {name} may no longer {_described({'prefix': False, **permission})}")
