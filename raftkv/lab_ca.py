"""A throwaway certificate authority for a local lab (`raftkv up --tls`, the tests).

It writes, into one directory, a CA and one certificate for the lab's nodes, signed by it:

    ca.pem                    the CA's certificate: what clients trust (curl --cacert, raftkv --cacert)
    node.pem, node-key.pem    every node's certificate and key: the client API (HTTPS, and the gRPC
                              etcd API), and mutual TLS on the peer links
    client.pem, client-key.pem  a client certificate, for trying a cluster that requires one

The node certificate names localhost, 127.0.0.1, ::1 and the extra hosts asked for, since clients
check that the name they dialled is in it (raftkv/tls.py); it may act as server and as client, as
a node is both to its peers and to the other members' client APIs. The CA's key is never written:
nothing can be signed by it once this returns, so a lab's certificates cannot outlive their use
as trust in it would. Keys are ECDSA P-256 (fast to make; every TLS stack takes them).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LabCertificates", "make_lab_certificates"]

VALID_DAYS = 30  # a lab's certificates, long enough for any run and short enough to be throwaway
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class LabCertificates:
    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path

    def node_args(self, require_client_certs: bool = False) -> list[str]:
        """`raftkv node` arguments for a lab node: mutual TLS on the peer links, TLS on the client
        API, and with `require_client_certs` client certificates required there too."""
        args = ["--tls-ca", self.ca, "--tls-cert", self.node_cert, "--tls-key", self.node_key,
                "--client-tls-cert", self.node_cert, "--client-tls-key", self.node_key]
        if require_client_certs:
            args += ["--client-tls-ca", self.ca]
        return [str(a) for a in args]


def make_lab_certificates(directory: Path, hosts: Iterable[str] = ()) -> LabCertificates:
    """A new CA and the lab's certificates in `directory` (made if missing; files there replaced).
    `hosts` (names or addresses) are named in the node certificate besides LOCAL_NAMES."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=VALID_DAYS)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftkv lab"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(name("raftkv lab CA")).issuer_name(name("raftkv lab CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
               .sign(ca_key, hashes.SHA256()))

    def issue(common_name: str, uses: list[x509.ObjectIdentifier], names: list[str]) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(common_name)).issuer_name(ca_cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(uses), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                  critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]),
                                            critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), key_pem

    node_names = list(dict.fromkeys([*LOCAL_NAMES, *(h for h in hosts if h not in ("", "0.0.0.0", "::"))]))
    both = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    node_cert, node_key = issue("raftkv lab node", both, node_names)
    client_cert, client_key = issue("raftkv lab client", [ExtendedKeyUsageOID.CLIENT_AUTH], [])
    files = LabCertificates(directory / "ca.pem", directory / "node.pem", directory / "node-key.pem",
                            directory / "client.pem", directory / "client-key.pem")
    _write(files.ca, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(files.node_cert, node_cert)
    _write(files.node_key, node_key, private=True)
    _write(files.client_cert, client_cert)
    _write(files.client_key, client_key, private=True)
    return files


def _general_name(text: str):  # -> x509.GeneralName
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Written whole (a temporary file renamed over it); a key readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
