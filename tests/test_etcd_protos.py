"""The committed stubs in raftkv/etcd/pb/ are what protoc makes of the pinned etcd .proto files,
and they name etcd's wire identities (packages, services, field numbers) unchanged."""

from __future__ import annotations

import hashlib
from pathlib import Path

from raftkv.etcd.pb import kv_pb2, rpc_pb2
from raftkv.etcd.proto.generate import HERE, generate

# The pinned files as taken from etcd v3.5.33 (raftkv/etcd/proto/README.md): a changed file must be
# a deliberate re-pin, with the README updated.
PINNED_SHA256 = {
    "auth.proto": "443e661f9e423d3376d513e76446e957ae0132c6f63fff4510fde3c7a587be05",
    "kv.proto": "76b0d596ecc8dd1b535be683777910a5b4fe0705fb57baccacfcc7d98d11821e",
    "rpc.proto": "7cf0d098aae57522a574bf591145e55539a15212885d43709536553833cd6f40",
}


def test_the_pinned_protos_are_etcds_unchanged() -> None:
    for name, digest in PINNED_SHA256.items():
        assert hashlib.sha256((HERE / name).read_bytes()).hexdigest() == digest, name


def test_the_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    generate(tmp_path)
    committed = Path(rpc_pb2.__file__).parent
    fresh = sorted(p.name for p in (tmp_path / "raftkv/etcd/pb").iterdir())
    assert fresh == ["auth_pb2.py", "kv_pb2.py", "rpc_pb2.py", "rpc_pb2_grpc.py"]
    for name in fresh:
        assert (tmp_path / "raftkv/etcd/pb" / name).read_text() == (committed / name).read_text(), name


def test_wire_names_are_etcds() -> None:
    assert sorted(rpc_pb2.DESCRIPTOR.services_by_name) == ["Auth", "Cluster", "KV", "Lease", "Maintenance", "Watch"]
    assert rpc_pb2.DESCRIPTOR.package == "etcdserverpb" and kv_pb2.DESCRIPTOR.package == "mvccpb"
    fields = {f.name: f.number for f in rpc_pb2.RangeRequest.DESCRIPTOR.fields}
    assert fields["range_end"] == 2 and fields["count_only"] == 9 and fields["max_create_revision"] == 13
    assert {f.name: f.number for f in kv_pb2.KeyValue.DESCRIPTOR.fields}["lease"] == 6
