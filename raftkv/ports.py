"""Every address a command will listen on is tried before it starts anything.

`raftkv up`, `raftkv node` and `raftkv dashboard` call `check_listeners` first, so a taken port
is reported in one line (which port, what it was for, which process holds it) and nothing is
started, instead of a node that dies with the reason only in its log, or a traceback after the
URLs were printed.

The check binds each address the way the servers will (SO_REUSEADDR, as aiohttp's
`reuse_address=True` and asyncio's `start_server` do), so a port left in TIME_WAIT by a previous
run counts as free, as it does for them. A small race remains between the check and the real
bind; a server that loses it still fails on its own.

Which process holds a port comes from psutil (the kernel's socket tables matched to processes'
file descriptors); it names the process only when allowed to see it (root, or the same user).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

from raftkv.node.config import NodeConfig

DEFAULT_ETCD_PORT = 2379  # etcd's client port: node1's etcd API in `raftkv up`, nodeN's 2379 + N - 1
MAX_COMMAND_CHARS = 80


class PortUnavailableError(Exception):
    """One line saying which address cannot be listened on, and why."""


@dataclass(frozen=True)
class Listener:
    host: str
    port: int
    purpose: str  # what will listen there, in words: "node2's client port"


def node_listeners(cfg: NodeConfig) -> list[Listener]:
    """The two addresses a node listens on: its client HTTP port and its peer (Raft) port."""
    name = cfg.me.display_name
    etcd = cfg.etcd_listen_address()
    return [Listener(*cfg.client_listen_address(), f"{name}'s client port"),
            Listener(*cfg.peer_listen_address(), f"{name}'s peer port"),
            *([Listener(*etcd, f"{name}'s etcd API port")] if etcd else [])]


def check_listeners(listeners: Iterable[Listener]) -> None:
    """Raise PortUnavailableError for the first address that cannot be listened on, or for a port
    that two of them would share."""
    taken: dict[int, Listener] = {}
    for listener in listeners:
        if listener.port in taken:
            raise PortUnavailableError(
                f"port {listener.port} is both {taken[listener.port].purpose} and {listener.purpose}"
            )
        taken[listener.port] = listener
        _try_bind(listener)


def _try_bind(listener: Listener) -> None:
    where = f"{listener.host}:{listener.port} ({listener.purpose})"
    try:
        addresses = socket.getaddrinfo(
            listener.host, listener.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise PortUnavailableError(f"cannot listen on {where}: {e.strerror}") from None
    for family, kind, proto, _, address in addresses:  # a name like localhost binds every address it has
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortUnavailableError(f"port {where} is already in use{_holder(listener.port)}") from None
                raise PortUnavailableError(f"cannot listen on {where}: {e.strerror}") from None


def _holder(port: int) -> str:
    """' by pid 42 (python3 -m http.server 3000)', or '' when the OS does not say."""
    try:
        sockets = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return ""
    pids = [s.pid for s in sockets if s.laddr and s.laddr.port == port and s.status == psutil.CONN_LISTEN]
    pids += [s.pid for s in sockets if s.laddr and s.laddr.port == port]  # bound, not listening
    pid = next((p for p in pids if p), None)
    if pid is None:
        return " by another process" if pids else ""
    try:
        process = psutil.Process(pid)
        command = " ".join(" ".join(process.cmdline()).split()) or process.name()  # one line
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f" by pid {pid}"
    if len(command) > MAX_COMMAND_CHARS:
        command = command[: MAX_COMMAND_CHARS - 1] + "…"
    return f" by pid {pid} ({command})"


WILDCARD_HOSTS = ("0.0.0.0", "::")  # listen on every interface
OPEN_TO_NETWORK = "warning: listening on every interface: anyone on your network can use {what}"


def reachable_urls(listen_host: str, port: int, scheme: str = "http") -> list[str]:
    """Where a server listening on listen_host:port can be opened: on a wildcard address, from this
    machine through loopback and from others through each network address ("0.0.0.0" opens
    nowhere); otherwise at listen_host itself."""
    if listen_host not in WILDCARD_HOSTS:
        return [f"{scheme}://{listen_host}:{port}"]
    return [f"{scheme}://{host}:{port}" for host in ["127.0.0.1", *network_addresses(listen_host)]]


def network_addresses(wildcard: str) -> list[str]:
    """How other machines can reach a server listening on a wildcard address: the machine's
    non-loopback interface addresses, as URL hosts (IPv6 in brackets, and only for "::")."""
    families = [socket.AF_INET] + ([socket.AF_INET6] if wildcard == "::" else [])
    found = []
    for addresses in psutil.net_if_addrs().values():
        for a in addresses:
            if a.family not in families:
                continue
            ip = ipaddress.ip_address(a.address.split("%")[0])
            if ip.is_loopback or ip.is_link_local:
                continue
            found.append(f"[{ip}]" if ip.version == 6 else str(ip))
    return found
