#!/usr/bin/env python3
"""raftkv-pod: the entrypoint of the raftkv StatefulSet's pods (deploy/kubernetes/).

Theory of operation
-------------------
A pod knows two things when it starts: its name (`raftkv-4`: the StatefulSet's name and the pod's
ordinal) and its volume. From them it builds one `raftkv node` command line and execs it, so the
node is the container's main process and receives its signals (raftkv stops cleanly on SIGTERM).

- Ordinals below RAFTKV_FOUNDERS (3) are the founding members: `--id raftkv-N --cluster
  raftkv-0@...,raftkv-1@...,raftkv-2@...`, every address a stable DNS name under the headless
  Service. The command line is the same on every start; raftkv checks that the data directory
  was made for it.
- Higher ordinals join the live cluster through the client Service: `--join URL --name raftkv-N
  --advertise-client ... --advertise-peer ...`. On its first start the cluster adds the node as a
  learner under a fresh id (`raftkv-4-<64 random bits>`), which raftkv records in the volume
  (`<data-dir>/MEMBER`); on a restart the volume says who the node is and nothing is asked.

The volume decides, with one exception: an id the cluster removed is gone for good (ids are never
reused), so a volume holding one can never serve again. When the cluster answers that the volume's
id was removed, the data directory is set aside (renamed, never deleted) and the pod joins anew;
and a founding ordinal with an empty volume whose founding id was removed joins instead of
founding again (how a founder whose disk was lost is replaced: remove it, then delete its claim and
its pod). When the cluster does not answer (the very first start, a cluster restarting), the volume
decides alone, so a cluster that is down never changes what a pod does.

One guard: a founding ordinal with an empty volume refuses to found when the leader says that
member's log once matched its own. That founder ran on a disk this is not (lost, or a changed
RAFTKV_DATA_DIR), and founding again on an empty one would forget its term and vote. Only a
leader's answer carries that figure, so the guard catches the case when it can, not always.

A pod never removes itself when it stops. Kubernetes stops pods for many reasons (a rolling
update, a drained node, an eviction), a pod cannot tell a scale-down from them without reading
the StatefulSet through the Kubernetes API, and a removal is final: removing the member on every
stop would turn each restart into a new learner that copies the whole state again, and would
demote voters. Removing a member is the operator's step before scaling down, as etcd's guide
does it with `etcdctl member remove`: `kubectl exec raftkv-0 -- raftkv member remove raftkv-4`,
then `kubectl scale statefulset raftkv --replicas=4`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raftkv.node.config import ConfigError
from raftkv.node.membership import Identity

ASK_CLUSTER_TIMEOUT_S = 3.0  # past this, the cluster counts as not answering and the volume decides
USAGE = """usage:
  raftkv-pod node [FLAGS...]     run this pod's raftkv node (extra `raftkv node` FLAGS are passed on)
  raftkv-pod command [FLAGS...]  print the `raftkv node` command line `node` would run, and run nothing
"""


@dataclass(frozen=True, slots=True)
class Pod:
    """Who this pod is and where its cluster lives, from its name and environment."""

    set_name: str  # the StatefulSet's name: pods are <set_name>-<ordinal>
    ordinal: int
    namespace: str
    service: str  # the headless Service: <pod>.<service>.<namespace>.svc.<cluster_domain>
    client_service: str  # the Service clients (and joining pods) use
    cluster_domain: str
    founders: int  # ordinals 0 .. founders-1 found the cluster
    client_port: int
    peer_port: int
    data_dir: Path
    join_url_override: str | None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Pod:
        hostname = env.get("HOSTNAME") or socket.gethostname()
        match = re.fullmatch(r"(.+)-(\d+)", hostname)
        if match is None:
            raise SystemExit(f"raftkv-pod: the pod name {hostname!r} does not end in -<ordinal>; "
                             "raftkv-pod runs in a StatefulSet's pods")
        set_name = match.group(1)
        founders = int(env.get("RAFTKV_FOUNDERS", "3"))
        if founders < 1:
            raise SystemExit(f"raftkv-pod: RAFTKV_FOUNDERS must be at least 1, not {founders}")
        return cls(
            set_name=set_name,
            ordinal=int(match.group(2)),
            namespace=env.get("POD_NAMESPACE", "default"),
            service=env.get("RAFTKV_SERVICE", set_name),
            client_service=env.get("RAFTKV_CLIENT_SERVICE", f"{set_name}-client"),
            cluster_domain=env.get("RAFTKV_CLUSTER_DOMAIN", "cluster.local"),
            founders=founders,
            client_port=int(env.get("RAFTKV_CLIENT_PORT", "3000")),
            peer_port=int(env.get("RAFTKV_PEER_PORT", "4000")),
            data_dir=Path(env.get("RAFTKV_DATA_DIR", "/var/lib/raftkv/data")),
            join_url_override=env.get("RAFTKV_JOIN_URL"),
        )

    @property
    def name(self) -> str:
        return f"{self.set_name}-{self.ordinal}"

    def host(self, ordinal: int) -> str:
        """The stable DNS name of the pod with this ordinal (the headless Service publishes it)."""
        return f"{self.set_name}-{ordinal}.{self.service}.{self.namespace}.svc.{self.cluster_domain}"

    @property
    def join_url(self) -> str:
        """Where a new member asks to join: the client Service, so any ready member can answer."""
        if self.join_url_override:
            return self.join_url_override.rstrip("/")
        return f"http://{self.client_service}.{self.namespace}.svc.{self.cluster_domain}:{self.client_port}"

    def founding_cluster(self) -> str:
        return ",".join(f"{self.set_name}-{i}@{self.host(i)}:{self.client_port}:{self.peer_port}"
                        for i in range(self.founders))


def node_command(pod: Pod, identity: Identity | None, removed_ids: frozenset[str], extra: list[str]) -> list[str]:
    """The `raftkv node` command line of this pod, given the identity in its volume (None: empty)
    and the ids its cluster says were removed. Pure, so every case can be tested."""
    if identity is not None:
        founding = identity.member_id == pod.name  # a founder's id is its name; a joined member's is fresh
    else:
        founding = pod.ordinal < pod.founders and pod.name not in removed_ids
    common = ["--data-dir", str(pod.data_dir), "--listen-client", "0.0.0.0", "--listen-peer", "0.0.0.0"]
    if founding:
        return ["raftkv", "node", "--id", pod.name, "--cluster", pod.founding_cluster(), *common, *extra]
    host = pod.host(pod.ordinal)
    return ["raftkv", "node", "--join", pod.join_url, "--name", pod.name,
            "--advertise-client", f"http://{host}:{pod.client_port}", "--advertise-peer", f"{host}:{pod.peer_port}",
            *common, *extra]


def settle(pod: Pod) -> tuple[Identity | None, frozenset[str]]:
    """This pod's identity, after setting aside a volume whose member the cluster removed, and
    the removed ids (empty when the cluster was not asked or did not answer)."""
    identity = _load_identity(pod.data_dir)
    if identity is None and pod.ordinal >= pod.founders:
        return None, frozenset()  # it joins, whatever the cluster says
    view = cluster_view(pod.join_url)
    removed = frozenset(view.get("removedIDs", ())) if view else frozenset()
    if identity is not None and identity.member_id in removed:
        aside = pod.data_dir.with_name(f"{pod.data_dir.name}.removed-{identity.member_id}")
        _say(f"the cluster removed member {identity.member_id}, whose data is in {pod.data_dir}: "
             f"setting it aside as {aside} and joining anew")
        pod.data_dir.rename(aside)
        identity = None
    founder = pod.ordinal < pod.founders
    if founder and identity is None and pod.name not in removed and (match := _acknowledged(view, pod.name)):
        # The leader holds entries this founder acknowledged, so it once ran on a disk that is not
        # this one: founding again on an empty disk would forget its term and vote (Raft
        # section 5.2; Figure 2 keeps both on stable storage).
        raise SystemExit(
            f"raftkv-pod: {pod.data_dir} is empty, but the leader knows {pod.name} held its log up to "
            f"index {match}: this founder's data is lost or elsewhere. Restore the volume, or remove the "
            f"member (kubectl exec {pod.set_name}-<another ordinal> -- raftkv member remove {pod.name}) and "
            "restart this pod: it then joins anew as a learner")
    return identity, removed


def cluster_view(cluster_url: str) -> dict[str, Any] | None:
    """The cluster's GET /members answer, the leader's when it can be had (only the leader's
    carries matchIndex), or None when the cluster does not answer in time."""
    view = _get_members(cluster_url)
    if view is None or view.get("node") == view.get("leader"):
        return view
    leader = next((row for row in view["members"] if isinstance(row, dict) and row.get("id") == view["leader"]), None)
    return (_get_members(leader["clientURL"]) if leader else None) or view  # a follower answered: ask the leader


def _get_members(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{url}/members", timeout=ASK_CLUSTER_TIMEOUT_S) as answer:
            view = json.load(answer)
    except (OSError, ValueError) as exc:  # URLError and timeouts are OSErrors
        _say(f"{url} did not answer GET /members ({exc}); the volume decides")
        return None
    ok = isinstance(view, dict) and isinstance(view.get("members"), list)
    return view if ok else None


def _acknowledged(view: dict[str, Any] | None, member_id: str) -> int:
    """How far the leader knows `member_id`'s log to match its own (0: not known; only a leader's
    answer carries matchIndex)."""
    rows = view.get("members", []) if view else []
    return next((row.get("matchIndex") or 0 for row in rows if isinstance(row, dict) and row.get("id") == member_id), 0)


def _load_identity(data_dir: Path) -> Identity | None:
    try:
        return Identity.load(data_dir)
    except ConfigError as exc:
        raise SystemExit(f"raftkv-pod: {exc}") from None


def _say(text: str) -> None:
    print(f"raftkv-pod: {text}", file=sys.stderr, flush=True)


def main(argv: list[str], env: Mapping[str, str]) -> int:
    if not argv or argv[0] not in ("node", "command"):
        print(USAGE, end="", file=sys.stderr)
        return 2
    pod = Pod.from_env(env)
    command = node_command(pod, *settle(pod), argv[1:])
    if argv[0] == "command":
        print(shlex.join(command))
        return 0
    _say(shlex.join(command))
    os.execvp(command[0], command)  # never returns: the node becomes the container's process
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], os.environ))
