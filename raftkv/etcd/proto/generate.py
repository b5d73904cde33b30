"""Regenerate raftkv/etcd/pb/ from the pinned etcd protocol buffers beside this file.

Run `python -m raftkv.etcd.proto.generate` (needs grpcio-tools, in the test extra) after changing
the pinned .proto files. The .proto files are etcd's, unchanged (see README.md here); what this
script takes out on the way to protoc is only what Go's code generators read: the gogoproto
options and the grpc-gateway HTTP annotations. Neither changes a message, a field number or a
service name, so what goes over the wire is etcd's. Imports are rewritten to this package's path,
so the generated modules import each other as `raftkv.etcd.pb.*`.

tests/test_etcd_protos.py checks that the committed modules describe exactly what protoc makes of
the pinned files.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT_PACKAGE = "raftkv/etcd/pb"
PROTOS = ("kv.proto", "auth.proto", "rpc.proto")
_IMPORTS = {"etcd/api/mvccpb/kv.proto": f"{OUT_PACKAGE}/kv.proto",
            "etcd/api/authpb/auth.proto": f"{OUT_PACKAGE}/auth.proto"}
_GO_ONLY = [
    re.compile(r'^import "(gogoproto/gogo|google/api/annotations)\.proto";\n', re.M),
    re.compile(r"^option \(gogoproto\.[a-z_]+\) = \w+;\n", re.M),
    re.compile(r"\s*\[\(gogoproto\.[a-z_]+\) = [^\]]+\]"),
]


_HTTP_OPTION = "option (google.api.http) = {"


def _without_http_options(text: str) -> str:
    """Cut every `option (google.api.http) = {...};` (its braces nest: additional_bindings)."""
    while (start := text.find(_HTTP_OPTION)) >= 0:
        depth, i = 0, start + len(_HTTP_OPTION) - 1
        while True:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
            if depth == 0:
                break
        end = text.index(";", i) + 1
        text = text[:start].rstrip(" ") + text[end:].lstrip("\n")
    return text


def for_protoc(text: str) -> str:
    """A pinned .proto without its Go-only options, importing its siblings from this package."""
    text = _without_http_options(text)
    for pattern in _GO_ONLY:
        text = pattern.sub("", text)
    for theirs, ours in _IMPORTS.items():
        text = text.replace(f'import "{theirs}";', f'import "{ours}";')
    return text


def generate(out_root: Path) -> None:
    """Write the generated modules under out_root/raftkv/etcd/pb."""
    from grpc_tools import protoc  # a development tool only: the node needs just grpcio and protobuf

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / OUT_PACKAGE
        src.mkdir(parents=True)
        for name in PROTOS:
            (src / name).write_text(for_protoc((HERE / name).read_text()))
        args = ["protoc", f"-I{tmp}", f"--python_out={out_root}", f"--grpc_python_out={out_root}"]
        if protoc.main([*args, *(f"{OUT_PACKAGE}/{name}" for name in PROTOS)]) != 0:
            raise SystemExit("protoc failed")
    for name in PROTOS:  # only rpc.proto has services; the others' gRPC modules would be empty
        if name != "rpc.proto":
            (out_root / OUT_PACKAGE / name.replace(".proto", "_pb2_grpc.py")).unlink()


if __name__ == "__main__":
    generate(HERE.parents[2])
    print(f"generated {OUT_PACKAGE} from {', '.join(PROTOS)}", file=sys.stderr)
