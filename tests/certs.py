"""Test certificates for mutual TLS, made with the openssl command line (the `cryptography`
package is not a dependency of the project)."""

from __future__ import annotations

import os
import subprocess


def make_test_certs(tmp: str) -> tuple[str, str, str]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True, timeout=30)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=raftkv-test-ca")
    run("req", *ec, "-keyout", "node.key", "-out", "node.csr", "-subj", "/CN=raftkv-node")
    with open(os.path.join(tmp, "ext.cnf"), "w") as f:
        f.write("basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n")
    sign = "x509 -req -in node.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out node.crt -days 2"
    run(*sign.split(), "-extfile", "ext.cnf")
    return tuple(os.path.join(tmp, n) for n in ("ca.crt", "node.crt", "node.key"))  # type: ignore[return-value]
