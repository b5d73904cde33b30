"""`raftkv watch`, `raftkv lease ...`, `raftkv lock` and `raftkv elect`: the coordination
commands, as etcdctl's watch, lease, lock and elect.

`lock` and `elect` follow the recipe in concurrency.py; both print the holder's fencing token, and
`lock` gives it to its command as RAFTKV_FENCING_TOKEN. A command that outlives its lock (the
lease lost: the cluster unreachable for a whole TTL, or the lease revoked) is sent SIGTERM, and
`lock` exits 1 saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import click

from raftkv.cli_support import Connection, call, connection_options, echo_table, fail
from raftkv.client import Client, ClusterUnreachableError, StreamRefused, WatchCompacted
from raftkv.concurrency import RETRY_S, Contender, Holding, RecipeFailed, Session, SessionLost, leaders

DEFAULT_TTL_S = 10  # as etcdctl lock's session
NOTICE_AFTER_S = 0.5  # a wait longer than this is said on stderr
TERM_GRACE_S = 5.0  # a command that lost its lock gets this long after SIGTERM before SIGKILL

__all__ = ["elect", "lease", "lock", "watch"]


# ---------------------------------------------------------------------- watch ----------------------

@click.command()
@connection_options
@click.argument("prefix")
@click.option("--exact", is_flag=True, help="Watch exactly the key PREFIX names, not every key under it.")
@click.option("--rev", "start_revision", type=click.IntRange(1), help="Start at this past revision (default: now).")
@click.option("--prev-kv", is_flag=True, help="Show each event's previous value.")
@click.option("--json", "as_json", is_flag=True, help="Print each revision's events as one JSON line.")
def watch(conn: Connection, prefix: str, exact: bool, start_revision: int | None, prev_kv: bool, as_json: bool) -> None:
    """Print changes to keys under PREFIX as they commit, until interrupted.

    Resumes on another endpoint when its node goes away, from the revision after the last one
    printed: no change is skipped or printed twice."""

    async def go() -> None:
        async with conn.client() as client:
            where = {"key": prefix} if exact else {"prefix": prefix}
            async for batch in client.watch(**where, start_revision=start_revision, prev_kv=prev_kv):
                if as_json:
                    click.echo(json.dumps(batch))
                    continue
                for event in batch["events"]:
                    click.echo(_event_line(event, batch["revision"], prev_kv))

    try:
        _until_interrupted(go())
    except WatchCompacted as e:
        raise click.ClickException(f"{e}; watch from a later --rev, or from now") from None
    except StreamRefused as e:  # a bad request (an empty or oversized prefix), not a node that went away
        fail(e.status, e.answer)


def _event_line(event: dict[str, Any], revision: int, prev_kv: bool) -> str:
    line = f"{event['type'].upper()} {event['key']}"
    if event["type"] == "put":
        line += f" {json.dumps(event['kv']['value'])}"
    if prev_kv:
        prev = event.get("prev")
        line += f" (was {json.dumps(prev['value']) if prev else 'absent'})"
    return f"{line}  @{revision}"


# ---------------------------------------------------------------------- leases ---------------------

@click.group()
def lease() -> None:
    """Leases, as `etcdctl lease ...`: keys put with --lease ID go when the lease expires or is revoked."""


@lease.command(name="grant")
@connection_options
@click.argument("ttl", type=click.IntRange(1))
def lease_grant(conn: Connection, ttl: int) -> None:
    """Grant a lease of TTL seconds; prints its id."""
    answer = call(conn, "POST", "/leases", {"ttl": ttl})
    click.echo(f"lease {answer['id']} granted with TTL {answer['ttl']} s")


@lease.command(name="keepalive")
@connection_options
@click.argument("lease_id", type=click.IntRange(1))
@click.option("--once", is_flag=True, help="Renew once and exit.")
def lease_keepalive(conn: Connection, lease_id: int, once: bool) -> None:
    """Renew lease LEASE_ID for its whole TTL, every TTL/3, until interrupted (or --once)."""

    async def go() -> None:
        async with conn.client() as client:
            while True:
                try:
                    status, answer = await client.request("POST", f"/leases/{lease_id}/keepalive")
                except ClusterUnreachableError as e:
                    if once:
                        raise click.ClickException(f"no endpoint answered: {e}") from None
                    click.echo(f"no endpoint answered; retrying ({e})", err=True)
                    await asyncio.sleep(1)
                    continue
                if status != 200:
                    fail(status, answer)
                click.echo(f"lease {lease_id} kept alive: TTL {answer['ttl']} s")
                if once:
                    return
                await asyncio.sleep(answer["ttl"] / 3)

    _until_interrupted(go())


@lease.command(name="revoke")
@connection_options
@click.argument("lease_id", type=click.IntRange(1))
def lease_revoke(conn: Connection, lease_id: int) -> None:
    """Revoke lease LEASE_ID: its keys are deleted in one revision."""
    answer = call(conn, "DELETE", f"/leases/{lease_id}")
    click.echo(f"lease {lease_id} revoked at revision {answer['revision']}; {len(answer['deleted'])} keys deleted")


@lease.command(name="list")
@connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the GET /leases answer.")
def lease_list(conn: Connection, as_json: bool) -> None:
    """Every lease: id, TTL, how many keys it holds."""
    answer = call(conn, "GET", "/leases")
    if as_json:
        click.echo(json.dumps(answer))
        return
    echo_table(["ID", "TTL", "KEYS", "GRANTED AT"],
               [[str(r["id"]), str(r["ttl"]), str(r["keys"]), str(r["grantedRevision"])] for r in answer["leases"]])


@lease.command(name="show")
@connection_options
@click.argument("lease_id", type=click.IntRange(1))
def lease_show(conn: Connection, lease_id: int) -> None:
    """One lease: its TTL, what is left of it (the leader's clock) and its keys."""
    answer = call(conn, "GET", f"/leases/{lease_id}")
    click.echo(f"lease {lease_id}: TTL {answer['ttl']} s, {answer['remaining']} s left, "
               f"{len(answer['keys'])} keys{': ' if answer['keys'] else ''}{', '.join(answer['keys'])}")


# ---------------------------------------------------------------------- locks and elections --------

def _queue_name(_ctx: click.Context, _param: click.Parameter, name: str) -> str:
    """A lock's or election's NAME: the prefix of its queue's keys, so never empty (its queue would
    be keys at the top of the key space, among everyone's)."""
    if not name:
        raise click.BadParameter("must not be empty: it names the lock's or election's keys (NAME/...)")
    return name


@click.command(context_settings={"ignore_unknown_options": True})
@connection_options
@click.argument("name", callback=_queue_name)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.option("--ttl", type=click.IntRange(1, 3600), default=DEFAULT_TTL_S, show_default=True,
              help="The lease's TTL: how long a crashed holder keeps the lock.")
def lock(conn: Connection, name: str, command: tuple[str, ...], ttl: int) -> None:
    """Hold lock NAME while COMMAND runs (`raftkv lock NAME -- COMMAND ...`), then release it.

    COMMAND gets the fencing token as RAFTKV_FENCING_TOKEN; the exit status is COMMAND's. Without
    COMMAND, holds the lock until interrupted."""

    async def go() -> int:
        async with conn.client() as client, _session(client, ttl) as session:
            holding = await _acquire(Contender(session, name, _holder()), f"lock {name}")
            click.echo(f"{holding.key} holds {name}, fencing token {holding.token}", err=bool(command))
            if not command:
                await session.lost.wait()
                raise SessionLost(session.why)
            return await _run_holding(command, holding, session)

    sys.exit(_recipe(go()))


@click.command()
@connection_options
@click.argument("name", callback=_queue_name)
@click.argument("value", required=False)
@click.option("--listen", is_flag=True, help="Only print who leads NAME, as it changes.")
@click.option("--ttl", type=click.IntRange(1, 3600), default=DEFAULT_TTL_S, show_default=True,
              help="The lease's TTL: how long a crashed leader stays leader.")
def elect(conn: Connection, name: str, value: str | None, listen: bool, ttl: int) -> None:
    """Campaign in election NAME with VALUE, print who leads as it changes, and lead until
    interrupted (then resign). With --listen, only print who leads."""
    if (value is None) != listen:
        raise click.UsageError("give VALUE to campaign, or --listen to observe")

    async def observe(client: Client) -> None:
        async for leader in leaders(client, name):
            click.echo(f"leader of {name}: " + ("none" if leader is None else
                       f"{json.dumps(leader['value'])} (fencing token {leader['create_revision']})"))

    async def go() -> int:
        async with conn.client() as client:
            if listen:
                await observe(client)
                return 0
            async with _session(client, ttl) as session:
                watching = asyncio.ensure_future(observe(client))
                try:
                    holding = await _acquire(Contender(session, name, value), f"election {name}")
                    click.echo(f"elected in {name}: {json.dumps(value)}, fencing token {holding.token}")
                    await session.lost.wait()
                    raise SessionLost(session.why)
                finally:
                    watching.cancel()

    sys.exit(_recipe(go()))


@contextlib.asynccontextmanager
async def _session(client: Client, ttl: int) -> AsyncIterator[Session]:
    """A Session, saying so when its lease is slow to come: while no node answers, or none knows a
    leader, the grant is retried for up to RETRY_S, and a command silent that long looks hung."""
    notice = _notice_later(f"waiting for the cluster to grant a lease (retried for up to {RETRY_S:.0f} s)")
    try:
        async with Session(client, ttl) as session:
            notice.cancel()
            yield session
    finally:
        notice.cancel()


async def _acquire(contender: Contender, what: str) -> Holding:
    notice = _notice_later(f"waiting for {what}")
    try:
        return await contender.acquire()
    finally:
        notice.cancel()


def _notice_later(message: str) -> asyncio.TimerHandle:
    """`message` on stderr after NOTICE_AFTER_S, unless cancelled first."""
    return asyncio.get_running_loop().call_later(NOTICE_AFTER_S, functools.partial(click.echo, message, err=True))


async def _run_holding(command: tuple[str, ...], holding: Holding, session: Session) -> int:
    """Run `command` with the fencing token; SIGTERM (then SIGKILL) it if the lease is lost first."""
    env = {**os.environ, "RAFTKV_FENCING_TOKEN": str(holding.token), "RAFTKV_LOCK_KEY": holding.key}
    try:
        process = await asyncio.create_subprocess_exec(*command, env=env)
    except OSError as e:
        raise click.ClickException(f"cannot run {command[0]}: {e}") from None
    exited, lost = asyncio.ensure_future(process.wait()), asyncio.ensure_future(session.lost.wait())
    try:
        await asyncio.wait({exited, lost}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # interrupted: the command ends first, then the lock is released
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        await asyncio.shield(exited)
        raise
    finally:
        lost.cancel()
    if not exited.done():
        click.echo(f"lost {holding.key}: {session.why}; stopping the command", err=True)
        process.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), TERM_GRACE_S)
        except TimeoutError:
            process.kill()
            await exited
        raise SessionLost(session.why)
    return exited.result()


def _recipe(work: Any) -> int:
    """Run a lock or election until it ends or is interrupted; its exit status."""
    try:
        return _until_interrupted(work) or 0
    except SessionLost as e:
        click.echo(f"error: the lease was lost: {e}", err=True)
        return 1
    except (RecipeFailed, ClusterUnreachableError) as e:
        click.echo(f"error: {e}", err=True)
        return 1


def _until_interrupted(work: Any) -> Any:
    """Run `work`; SIGINT or SIGTERM cancels it, so that what it holds is given back on the way out."""

    async def main() -> Any:
        task = asyncio.ensure_future(work)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            return await task
        except asyncio.CancelledError:
            return 130

    return asyncio.run(main())


def _holder() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"
