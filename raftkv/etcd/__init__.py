"""etcd's v3 API over a raftkv node: the gRPC services etcdctl and etcd's client libraries speak.

`server.py` starts them on a node's event loop and `gateway.py` serves them as etcd's JSON gateway
(`/v3/...`) on the client port, both over the same service objects (`services.py`). `kv.py`,
`watch.py`, `lease.py` and `cluster.py` (Cluster and Maintenance) translate each RPC into the
node's own calls, and `auth.py` (Auth) into changes to raftkv's users and roles; `admission.py`
says who may call what, with raftkv's users, through the gate the node's HTTP API uses;
`convert.py` maps etcd's bytes to raftkv's text, `identity.py` its numeric ids and response
headers, `errors.py` its error codes and messages. The protocol buffers are etcd's,
pinned in `proto/` and generated into `pb/`.
"""

from raftkv.etcd.gateway import add_gateway_routes
from raftkv.etcd.server import start_etcd_server
from raftkv.etcd.services import Services, etcd_services

__all__ = ["Services", "add_gateway_routes", "etcd_services", "start_etcd_server"]
