"""How one node is configured: who the members are, where they listen, and the timings.

A cluster is described by its members, each with a client (HTTP) address and a peer (Raft)
address. On the command line that is `--cluster node1@127.0.0.1:3000:4000,node2@...`
(id@host:http_port:raft_port); in a file it is TOML (see `load_toml`).

TLS on the client API is a property of the whole cluster, as TLS on the peer links is: every member
serves it or none does. So a node gives every member's client URL its own scheme (https when it
serves TLS), whatever scheme the member table replicated for it, and a cluster started without TLS
and restarted with it needs no change to its member table.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from raftkv.client import Access
from raftkv.core import ReadMode
from raftkv.storage import DEFAULT_SEGMENT_BYTES
from raftkv.tls import ClientTLS

MAX_PORT = 65535


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Member:
    """A member as others reach it: `host`:`raft_port` for peers, `url` for clients. `id` is the
    member's id in Raft; `name` what people call it (a founding member's id is its name)."""

    id: str
    host: str
    http_port: int
    raft_port: int
    client_host: str | None = None  # when clients reach it at another address than peers do
    name: str = ""
    client_tls: bool = False  # its client API is served over TLS (https)
    # False: added by its peer address alone (etcd's member add) and its node has not published
    # its name and client URL yet (membership.MemberRecord): peers dial it, nobody can call it.
    started: bool = True

    @property
    def url(self) -> str:
        """Its client URL; "" for a member not started (etcd lists such a member with no client URL)."""
        if not self.started:
            return ""
        return f"{'https' if self.client_tls else 'http'}://{self.client_host or self.host}:{self.http_port}"

    @property
    def display_name(self) -> str:
        return self.name or self.id

    @classmethod
    def parse(cls, text: str) -> Member:
        """`id@host:http_port:raft_port`."""
        ident, at, rest = text.strip().partition("@")
        parts = rest.rsplit(":", 2)
        if not ident or not at or len(parts) != 3:
            raise ConfigError(f"member {text!r}: expected id@host:http_port:raft_port")
        host, http_port, raft_port = parts
        return cls(ident, host, _port(http_port, f"member {text!r}"), _port(raft_port, f"member {text!r}"))


def _port(text: str | int, where: str) -> int:
    """A port from the command line or a file; one out of range is refused here, since not every
    socket call refuses it (99999 binds to 99999 - 65536)."""
    try:
        port = int(text)
    except ValueError:
        raise ConfigError(f"{where}: ports must be numbers") from None
    if not 1 <= port <= MAX_PORT:
        raise ConfigError(f"{where}: port {port} is not a port (1 to {MAX_PORT})")
    return port


def _bind(listen: str | None, host: str, port: int) -> tuple[str, int]:
    """`listen` ("host" or "host:port") with the advertised host and port filling what it leaves out."""
    if not listen:
        return host, port
    listen_host, colon, listen_port = listen.rpartition(":") if listen.count(":") == 1 else ("", "", "")
    if not colon:
        return listen, port
    if not listen_port.isdigit():
        raise ConfigError(f"listen address {listen!r}: expected host or host:port")
    return listen_host, _port(listen_port, f"listen address {listen!r}")


def parse_cluster(text: str) -> dict[str, Member]:
    members = [Member.parse(part) for part in text.split(",") if part.strip()]
    if not members:
        raise ConfigError("the cluster has no members")
    by_id = {m.id: m for m in members}
    if len(by_id) != len(members):
        raise ConfigError("member ids must be unique")
    return by_id


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    members: dict[str, Member]
    # The client URL of a member of an existing cluster this node joins (as a learner, with an
    # empty log); None: a founding member of the cluster `members` describes.
    join_url: str | None = None
    # Where this node binds, when not where others reach it (`members`, the advertised addresses):
    # "host" or "host:port", e.g. "0.0.0.0" behind NAT or in a container. None: the advertised one.
    listen_client: str | None = None
    listen_peer: str | None = None
    # Where this node serves etcd's v3 gRPC API (raftkv/etcd/), "host:port"; None: not served.
    listen_etcd: str | None = None
    tick_ms: int = 20
    election_timeout_ticks: int = 10  # 200-400 ms with 20 ms ticks
    heartbeat_interval_ticks: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    read_mode: ReadMode = ReadMode.SAFE
    snapshot_every: int = 100_000  # applied entries between snapshots
    snapshot_retain_entries: int = 1_000  # kept after a snapshot so briefly lagging peers need no snapshot
    proposal_timeout_s: float = 5.0
    read_timeout_s: float = 5.0
    # How long a write or read waits for a leader when none is known (or its link is down) before
    # a 503; None: one maximum election timeout, by which time a new leader is normally known.
    no_leader_hold_ms: int | None = None
    max_batch_proposals: int = 4096
    wal_segment_bytes: int = DEFAULT_SEGMENT_BYTES  # how long each WAL segment is made (storage/wal.py)
    # The client port's bounds (api/connections.py): connections open at once (one past it is
    # answered 503), how long a request may take to arrive (its head from its first byte, then its
    # body), how long a connection may sit idle between requests, and how long a client may leave
    # an answer (a watch, a WebSocket) unread before it is cut off.
    max_client_connections: int = 1024
    client_header_timeout_s: float = 10.0
    client_body_timeout_s: float = 30.0
    client_idle_timeout_s: float = 75.0
    client_send_timeout_s: float = 30.0
    # Key history kept (node/compactor.py): the last N revisions, and/or what changed in the last
    # S seconds; the leader compacts the rest away through the log.
    history_retention_revisions: int | None = 100_000
    auto_compaction_retention_s: float | None = None
    # Mutual TLS between peers: all three, or none (plain TCP).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # TLS on the client API (the HTTP API, the etcd gateway on the same port, and etcd's gRPC API):
    # a certificate and its key, or neither (plain HTTP). With client_tls_ca, every client must
    # present a certificate that CA signed (mutual TLS). See `member_access` for the other way.
    client_tls_cert: Path | None = None
    client_tls_key: Path | None = None
    client_tls_ca: Path | None = None
    # The routes that break the cluster on purpose (forced elections, simulated partitions and
    # lossy links, held messages): a lab's tools, off unless asked for (`raftkv up` asks).
    enable_fault_injection: bool = False
    # Deliberately unsafe switches, for proving that `raftkv chaos` notices broken guarantees.
    unsafe_skip_fsync: bool = False  # acknowledge before the WAL reaches the disk
    unsafe_stale_reads: bool = False  # followers answer reads from local state without ReadIndex
    # What this node's data directory is recorded as made for, on its first start (see
    # node/startup.py): the founding members, or the URL it joined through.
    origin: str | None = None

    def __post_init__(self) -> None:
        if self.node_id not in self.members:
            raise ConfigError(f"node id {self.node_id!r} is not one of the members {sorted(self.members)}")
        if self.tick_ms < 1:
            raise ConfigError("tick_ms must be at least 1")
        if self.no_leader_hold_ms is not None and not 0 <= self.no_leader_hold_ms <= 60_000:
            raise ConfigError("no_leader_hold_ms must be from 0 to 60000")
        if self.wal_segment_bytes < 4096:
            raise ConfigError("wal_segment_bytes must be at least 4096")
        if self.max_client_connections < 1:
            raise ConfigError("max_client_connections must be at least 1")
        for name in ("client_header_timeout_s", "client_body_timeout_s", "client_idle_timeout_s",
                     "client_send_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be more than 0")
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            raise ConfigError("peer TLS needs all of tls_ca, tls_cert and tls_key")
        if (self.client_tls_cert is None) != (self.client_tls_key is None):
            raise ConfigError("client TLS needs both client_tls_cert and client_tls_key")
        if self.client_tls_ca is not None and self.client_tls_cert is None:
            raise ConfigError("client_tls_ca (clients must present a certificate) needs client_tls_cert and "
                              "client_tls_key (the node's own)")
        # Every member's client URL in this node's scheme (the module's docstring says why).
        members = {i: replace(m, client_tls=self.serves_client_tls) for i, m in self.members.items()}
        object.__setattr__(self, "members", members)  # a frozen dataclass normalizing its own field

    @property
    def serves_client_tls(self) -> bool:
        return self.client_tls_cert is not None

    @property
    def member_access(self) -> Access:
        """How this node calls other members' client APIs (relaying to the leader, joining, asking
        whether it was removed, learning their etcd endpoints): it presents its own client API
        certificate, for members that require one, and trusts client_tls_ca, else the peer links'
        CA (tls_ca), else the system's CAs."""
        return Access(ClientTLS(ca=self.client_tls_ca or self.tls_ca, cert=self.client_tls_cert,
                                key=self.client_tls_key))

    @property
    def storage_dir(self) -> Path:
        """Where the node keeps its WAL and snapshots, inside its data directory."""
        return self.data_dir / "raft"

    def client_listen_address(self) -> tuple[str, int]:
        return _bind(self.listen_client, self.me.client_host or self.me.host, self.me.http_port)

    def peer_listen_address(self) -> tuple[str, int]:
        return _bind(self.listen_peer, self.me.host, self.me.raft_port)

    def etcd_listen_address(self) -> tuple[str, int] | None:
        if self.listen_etcd is None:
            return None
        host, port = _bind(self.listen_etcd, self.me.client_host or self.me.host, 0)
        if not port:
            raise ConfigError(f"listen_etcd {self.listen_etcd!r}: expected host:port")
        return host, port

    @property
    def etcd_endpoint(self) -> str | None:
        """The etcd API's address as clients dial it (a wildcard bind is reached at the client host)."""
        address = self.etcd_listen_address()
        if address is None:
            return None
        host = self.me.client_host or self.me.host if address[0] in ("", "0.0.0.0", "::") else address[0]
        return f"{'https' if self.serves_client_tls else 'http'}://{host}:{address[1]}"

    @property
    def me(self) -> Member:
        return self.members[self.node_id]

    def peers(self) -> dict[str, Member]:
        return {i: m for i, m in self.members.items() if i != self.node_id}


def load_toml(path: Path, node_id: str | None = None) -> NodeConfig:
    """Read a node's configuration file.

    ```toml
    node_id = "node1"
    data_dir = "data/node1"
    tick_ms = 20
    [[members]]
    id = "node1"
    host = "127.0.0.1"
    http_port = 3000
    raft_port = 4000
    ```
    """
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from None
    try:
        members = {
            m["id"]: Member(m["id"], m["host"], _port(m["http_port"], f"member {m['id']!r}"),
                            _port(m["raft_port"], f"member {m['id']!r}")) for m in raw.pop("members")
        }
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{path}: every [[members]] needs id, host, http_port, raft_port ({e})") from None
    node_id = node_id or raw.pop("node_id", None)
    raw.pop("node_id", None)
    if not node_id:
        raise ConfigError(f"{path}: no node_id (set it in the file or with --id)")
    data_dir = Path(raw.pop("data_dir", f"data/{node_id}"))
    if "read_mode" in raw:
        raw["read_mode"] = ReadMode(raw["read_mode"])
    try:
        return NodeConfig(node_id=node_id, data_dir=data_dir, members=members, **raw)
    except TypeError as e:
        raise ConfigError(f"{path}: {e}") from None
