"""Throwaway certificate authority for the test-only TLS proxy.

TensorFlow's gs:// filesystem talks HTTPS to hard-coded Google hosts. To route it
to a local emulator without touching production code, the proxy must present a
certificate for those hosts that TF's libcurl accepts; libcurl trusts whatever
CA bundle `CURL_CA_BUNDLE` names. So each test session mints its own CA (never
written outside the session's temp dir) and one leaf certificate for the hosts.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertFiles:
    """PEM paths: `ca` goes into CURL_CA_BUNDLE; `cert` + `key` serve TLS."""

    ca: str
    cert: str
    key: str


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_certs(directory: str, hosts: list[str]) -> CertFiles:
    """Creates a CA and a leaf certificate for `hosts` (plus 127.0.0.1) in `directory`."""
    # EC keys: generating them is instant, unlike 2048-bit RSA on a busy core.
    now = datetime.datetime.now(datetime.timezone.utc)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("seqrec test CA"))
        .issuer_name(_name("seqrec test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    leaf_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    pem = serialization.Encoding.PEM
    return CertFiles(
        ca=_write(os.path.join(directory, "ca.pem"), ca_cert.public_bytes(pem)),
        cert=_write(os.path.join(directory, "leaf.pem"), leaf_cert.public_bytes(pem)),
        key=_write(
            os.path.join(directory, "leaf.key"),
            leaf_key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        ),
    )
