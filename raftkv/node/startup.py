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
  the fresh id the cluster gave; the leader then sends it the log, or a snapshot. The advertised
  client URL's scheme must be the one this node serves (https with --client-tls-cert).
  A member added for it beforehand is taken over instead: one with its name and both addresses
  (`raftkv member add`), or one added by its peer address alone and not started yet (`etcdctl
  member add`, which gives no name or client URL: members.py). The node then publishes its name
  and client URL through the log (MemberService.publish).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raftkv.client import Access, Client, ClusterUnreachableError, Credentials

from .config import ConfigError, Member, NodeConfig, parse_cluster
from .membership import Identity, MemberRecord

__all__ = ["claim_data_dir", "founding_config", "joining_config"]

log = logging.getLogger("raftkv.node")

JOIN_PATIENCE_S = 60.0  # how long a joining node keeps asking while the cluster is busy or electing
JOIN_RETRY_S = 0.5


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
                         before_joining: Callable[[NodeConfig], None], credentials: Credentials | None = None,
                         **options: Any) -> NodeConfig:
    """The configuration of a node joining a live cluster: on its first start, the cluster adds it
    as a learner (after `before_joining` accepted the configuration, e.g. its ports are free),
    asked with `credentials` when the cluster has auth on; on a restart, its data directory says
    who it is."""
    record = _advertised(name, advertise_client, advertise_peer, tls="client_tls_cert" in options)
    known = Identity.load(data_dir)
    if known is not None:
        if known.name != name:
            raise ConfigError(f"{data_dir} belongs to member {known.member_id} ({known.name}), not {name}")
        members = {**known.members(), known.member_id: record.as_member(known.member_id)}
        return NodeConfig(node_id=known.member_id, data_dir=data_dir, members=members, join_url=known.origin,
                          origin=known.origin, **options)
    unnamed = NodeConfig(node_id=name, data_dir=data_dir, members={name: record.as_member(name)}, **options)
    before_joining(unnamed)
    answer = await _ask_to_join(join_url, record, Access(unnamed.member_access.tls, credentials))
    member_id = answer["member"]["id"]
    members = {m["id"]: MemberRecord(m["name"], m["clientURL"], *_host_port(m["peerURL"])).as_member(m["id"])
               for m in answer["members"]}
    members[member_id] = record.as_member(member_id)  # what it advertises, also over an unstarted listing
    cfg = NodeConfig(node_id=member_id, data_dir=data_dir, members=members, join_url=join_url, origin=join_url,
                     **options)
    claim_data_dir(cfg)  # now, not at start: the cluster has added this id
    return cfg


def claim_data_dir(cfg: NodeConfig) -> None:
    """Record in a new data directory who its node is (a directory that has an identity keeps it).
    A node configured by a file (`--config`) has no origin: its file is what it was made for."""
    if cfg.origin is not None and Identity.load(cfg.data_dir) is None:
        joined = {} if cfg.join_url is None else {
            member_id: [m.display_name if m.started else "", m.url, m.host, m.raft_port]
            for member_id, m in cfg.members.items()}
        Identity(cfg.node_id, cfg.me.display_name, cfg.origin, joined).save(cfg.data_dir)


async def _ask_to_join(join_url: str, record: MemberRecord, access: Access) -> dict[str, Any]:
    """The cluster's answer to adding this node. A member already added for exactly this node (the
    same name and addresses: `raftkv member add`, or an earlier attempt whose answer was lost), or
    added by this node's peer address alone and not started (`etcdctl member add`), is this node,
    and is taken over rather than refused as a duplicate. A refusal that passes by itself (another
    membership change not committed yet, no leader, a commit that timed out, the URL not answering)
    is asked again until JOIN_PATIENCE_S has passed; any other refusal is final."""
    body = {"name": record.name, "clientURL": record.client_url, "peerURL": record.peer_address(), "learner": True}
    deadline = time.monotonic() + JOIN_PATIENCE_S
    said = None
    async with Client([join_url], timeout_s=15.0, access=access) as client:
        while True:
            try:
                status, answer = await client.request("POST", "/members", body)
                if status == 409 and isinstance(answer, dict) and answer.get("reason") == "duplicate":
                    status, listed = await client.request("GET", "/members")
                    answer = _added_for(record, listed) or answer
            except ClusterUnreachableError as e:
                status, answer = None, {"error": f"cannot reach {join_url}: {e}"}
            if status == 200 and isinstance(answer, dict) and "member" in answer:
                return answer
            error = answer.get("error") if isinstance(answer, dict) else answer
            if not _passes(status, answer) or time.monotonic() >= deadline:
                raise ConfigError(f"the cluster at {join_url} did not add {record.name} ({status or 'no answer'}): "
                                  f"{error}")
            if (status, error) != said:  # once per reason, not once per attempt
                said = (status, error)
                log.warning("join: the cluster at %s cannot add %s yet (%s: %s); asking again for up to %.0f s",
                            join_url, record.name, status or "no answer", error, deadline - time.monotonic())
            await asyncio.sleep(JOIN_RETRY_S)


def _passes(status: int | None, answer: Any) -> bool:
    """Whether a refusal to add a member is one that passes by itself."""
    if status is None or status in (503, 504):
        return True
    return status == 409 and isinstance(answer, dict) and answer.get("reason") == "pending"


def _added_for(record: MemberRecord, listed: Any) -> dict[str, Any] | None:
    """The member of GET /members's answer that was added for exactly `record`, or for its peer
    address and not started, as an add's answer. An unstarted one is not this node's to take if
    another member has its name or client URL (the cluster would refuse that add too)."""
    if not isinstance(listed, dict):
        return None
    members = [m for m in listed.get("members", ()) if isinstance(m, dict)]
    for member in members:
        if member.get("peerURL") != record.peer_address():
            continue
        if (member.get("name"), member.get("clientURL")) == (record.name, record.client_url):
            return {"member": member, "members": members}
        clash = any(m.get("name") == record.name or m.get("clientURL") == record.client_url for m in members)
        if not member.get("clientURL") and not clash:
            return {"member": member, "members": members}
    return None


def _advertised(name: str, advertise_client: str, advertise_peer: str, tls: bool) -> MemberRecord:
    scheme = "https" if tls else "http"
    client = advertise_client if "://" in advertise_client else f"{scheme}://{advertise_client}"
    if not client.startswith(f"{scheme}://"):
        serves = "over TLS (--client-tls-cert)" if tls else "without TLS"
        raise ConfigError(f"--advertise-client {advertise_client}: this node serves its client API {serves}, "
                          f"so its URL is {scheme}://...")
    host, port = _host_port(advertise_peer)
    return MemberRecord(name, client.rstrip("/"), host, port)


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{address!r}: expected host:port")
    return host, int(port)


def _id(member: Member) -> str:
    return member.id
