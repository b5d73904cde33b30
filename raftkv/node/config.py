"""How one node is configured: who the members are, where they listen, and the timings.

A cluster is described by its members, each with a client (HTTP) address and a peer (Raft)
address. On the command line that is `--cluster node1@127.0.0.1:3000:4000,node2@...`
(id@host:http_port:raft_port); in a file it is TOML (see `load_toml`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from raftkv.core import ReadMode


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

    @property
    def url(self) -> str:
        return f"http://{self.client_host or self.host}:{self.http_port}"

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
        try:
            return cls(ident, host, int(http_port), int(raft_port))
        except ValueError:
            raise ConfigError(f"member {text!r}: ports must be numbers") from None


def _bind(listen: str | None, host: str, port: int) -> tuple[str, int]:
    """`listen` ("host" or "host:port") with the advertised host and port filling what it leaves out."""
    if not listen:
        return host, port
    listen_host, colon, listen_port = listen.rpartition(":") if listen.count(":") == 1 else ("", "", "")
    if not colon:
        return listen, port
    if not listen_port.isdigit():
        raise ConfigError(f"listen address {listen!r}: expected host or host:port")
    return listen_host, int(listen_port)


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
    # Key history kept (node/compactor.py): the last N revisions, and/or what changed in the last
    # S seconds; the leader compacts the rest away through the log.
    history_retention_revisions: int | None = 100_000
    auto_compaction_retention_s: float | None = None
    # Mutual TLS between peers: all three, or none (plain TCP).
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
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
        tls = (self.tls_ca, self.tls_cert, self.tls_key)
        if any(tls) and not all(tls):
            raise ConfigError("peer TLS needs all of tls_ca, tls_cert and tls_key")

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
        return f"http://{host}:{address[1]}"

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
            m["id"]: Member(m["id"], m["host"], int(m["http_port"]), int(m["raft_port"])) for m in raw.pop("members")
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
