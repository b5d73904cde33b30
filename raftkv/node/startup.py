"""Who a node is when it starts: a founding member, a member joining a live cluster, or either
one restarting.

Theory of operation
-------------------
A data directory remembers who its node is (membership.Identity, in `<data-dir>/MEMBER`), written
on the first start and never changed. From then on the directory decides: a restart under another
id, or with a founding member list other than the one the directory was made for, is refused
with a message that says so, because running it would make a second member out of one disk, or
a node that believes in a cluster its log contradicts. After the first start, the membership a
node uses is the one its log and snapshots carry, not its command line.

- Founding: `--id node1 --cluster node1@...,node2@...` describes the founding members; the log
  begins with them (membership.bootstrap_state).
- Joining: `--name node4 --join URL --advertise-client URL --advertise-peer HOST:PORT` asks the
  cluster at URL to add this node as a learner (POST /members) and starts with an empty log under
  the fresh id the cluster gave; the leader then sends it the log, or a snapshot.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftkv.client import Client, ClusterUnreachableError

from .config import ConfigError, Member, NodeConfig, parse_cluster
from .membership import Identity, MemberRecord

__all__ = ["claim_data_dir", "founding_config", "joining_config"]


def founding_config(node_id: str, cluster: str, data_dir: Path, **options: Any) -> NodeConfig:
    """The configuration of a founding member, after checking its data directory agrees."""
    members = parse_cluster(cluster)
    origin = ",".join(f"{m.id}@{m.host}:{m.http_port}:{m.raft_port}" for m in sorted(members.values(), key=_id))
    cfg = NodeConfig(node_id=node_id, data_dir=data_dir, members=members, origin=origin, **options)
    known = Identity.load(data_dir)
    if known is None:
        return cfg  # a new data directory: the node records who it is as it starts (claim_data_dir)
    if known.member_id != node_id:
        raise ConfigError(f"{data_dir} belongs to member {known.member_id} ({known.name}), not {node_id}: "
                          "give its own --id, or a fresh --data-dir")
    elif known.origin != origin:
        raise ConfigError(f"{data_dir} was made for the cluster {known.origin}, but --cluster says {origin}: start "
                          "with the same --cluster (membership changes since are in the data directory), change "
                          "members with `raftkv member`, or use a fresh --data-dir")
    return cfg


async def joining_config(name: str, join_url: str, advertise_client: str, advertise_peer: str, data_dir: Path,
                         before_joining: Callable[[NodeConfig], None], **options: Any) -> NodeConfig:
    """The configuration of a node joining a live cluster: on its first start, the cluster adds it
    as a learner (after `before_joining` accepted the configuration, e.g. its ports are free); on a
    restart, its data directory says who it is."""
    record = _advertised(name, advertise_client, advertise_peer)
    known = Identity.load(data_dir)
    if known is not None:
        if known.name != name:
            raise ConfigError(f"{data_dir} belongs to member {known.member_id} ({known.name}), not {name}")
        members = {**known.members(), known.member_id: record.as_member(known.member_id)}
        return NodeConfig(node_id=known.member_id, data_dir=data_dir, members=members, join_url=known.origin,
                          origin=known.origin, **options)
    unnamed = record.as_member(name)
    before_joining(NodeConfig(node_id=name, data_dir=data_dir, members={name: unnamed}, **options))
    answer = await _ask_to_join(join_url, record)
    member_id = answer["member"]["id"]
    members = {m["id"]: MemberRecord(m["name"], m["clientURL"], *_host_port(m["peerURL"])).as_member(m["id"])
               for m in answer["members"]}
    members.setdefault(member_id, record.as_member(member_id))
    cfg = NodeConfig(node_id=member_id, data_dir=data_dir, members=members, join_url=join_url, origin=join_url,
                     **options)
    claim_data_dir(cfg)  # now, not at start: the cluster has added this id
    return cfg


def claim_data_dir(cfg: NodeConfig) -> None:
    """Record in a new data directory who its node is (a directory that has an identity keeps it).
    A node configured by a file (`--config`) has no origin: its file is what it was made for."""
    if cfg.origin is not None and Identity.load(cfg.data_dir) is None:
        joined = {} if cfg.join_url is None else {
            member_id: [m.display_name, m.url, m.host, m.raft_port] for member_id, m in cfg.members.items()}
        Identity(cfg.node_id, cfg.me.display_name, cfg.origin, joined).save(cfg.data_dir)


async def _ask_to_join(join_url: str, record: MemberRecord) -> dict[str, Any]:
    """The cluster's answer to adding this node. A member already added for exactly this node (the
    same name and addresses: `raftkv member add` first, or an earlier attempt whose answer was
    lost) is this node, and is taken over rather than refused as a duplicate."""
    body = {"name": record.name, "clientURL": record.client_url, "peerURL": record.peer_address(), "learner": True}
    try:
        async with Client([join_url], timeout_s=15.0) as client:
            status, answer = await client.request("POST", "/members", body)
            if status == 409 and isinstance(answer, dict) and answer.get("reason") == "duplicate":
                status, listed = await client.request("GET", "/members")
                answer = _added_for(record, listed) or answer
    except ClusterUnreachableError as e:
        raise ConfigError(f"cannot reach {join_url} to join the cluster: {e}") from None
    if status != 200 or not isinstance(answer, dict) or "member" not in answer:
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ConfigError(f"the cluster at {join_url} refused to add {record.name} ({status}): {error}")
    return answer


def _added_for(record: MemberRecord, listed: Any) -> dict[str, Any] | None:
    """The member of GET /members's answer that was added for exactly `record`, as an add's answer."""
    if not isinstance(listed, dict):
        return None
    for member in listed.get("members", ()):
        if (member.get("name"), member.get("clientURL"), member.get("peerURL")) == (
                record.name, record.client_url, record.peer_address()):
            return {"member": member, "members": listed["members"]}
    return None


def _advertised(name: str, advertise_client: str, advertise_peer: str) -> MemberRecord:
    client = advertise_client if "://" in advertise_client else f"http://{advertise_client}"
    host, port = _host_port(advertise_peer)
    return MemberRecord(name, client.rstrip("/"), host, port)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{address!r}: expected host:port")
    return host, int(port)


def _id(member: Member) -> str:
    return member.id
