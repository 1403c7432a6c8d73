"""Certificates for HTTPS interception (http_ca / http_key / http_inject_ca).

The only user of `cryptography` (the optional extra `sandlock[http]`),
imported lazily so the core stays stdlib-only; it mints certificates and
nothing else (the TLS sessions are Python's `ssl`).

- `load_ca`: a caller's CA (PEM certificate and key), checked to be a CA
  whose key matches.
- `ephemeral_ca`: a CA made for one sandbox: a fresh P-256 key that never
  leaves the caller and its supervisor, valid for a day, restricted to
  path length 0 and, when every allowed host is concrete (or a `*.suffix`),
  name-constrained to those DNS names: leaked, it can sign nothing else.
- `LeafMinter`: leaf certificates per SNI, signed by the CA (the proxy
  caches the resulting ssl contexts).
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import sys

from .exceptions import PolicyError

INSTALL_HINT = "pip install 'sandlock[http]'"
EPHEMERAL_LIFETIME = datetime.timedelta(days=1)
LEAF_LIFETIME = datetime.timedelta(days=1)
BACKDATE = datetime.timedelta(hours=1)


def crypto_location() -> str | None:
    """The directory cryptography is imported from (the caller's), so the
    supervisor, which runs with the bare interpreter's path, finds it too."""
    crypto()
    import cryptography
    return os.path.dirname(os.path.dirname(os.path.abspath(cryptography.__file__)))


def crypto(location: str | None = None):
    """The cryptography modules, or a PolicyError naming the extra;
    `location`: where the caller found it (see crypto_location)."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if location and location not in sys.path:
            sys.path.append(location)
            return crypto()
        raise PolicyError("http_ca / http_inject_ca: HTTPS interception needs the "
                          f"'cryptography' package: {INSTALL_HINT}") from None
    return x509, hashes, serialization, ec, NameOID


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def load_ca(cert_path: str, key_path: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM, unencrypted PKCS#8) of a caller's CA."""
    x509, _hashes, serialization, _ec, _oid = crypto()
    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise PolicyError(f"http_ca / http_key: cannot read {e.filename!r}: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise PolicyError(f"http_ca / http_key: not a PEM certificate and unencrypted key: {e}") from None
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = bc.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise PolicyError(f"http_ca: {cert_path!r} is not a CA certificate (basicConstraints CA:TRUE)")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.PEM
    if cert.public_key().public_bytes(enc, pub) != key.public_key().public_bytes(enc, pub):
        raise PolicyError("http_key: the key does not match the http_ca certificate")
    key_pem = key.private_bytes(enc, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return cert.public_bytes(enc), key_pem


def ephemeral_ca(dns_names: tuple[str, ...] | None) -> tuple[bytes, bytes]:
    """A fresh CA for one sandbox; `dns_names`: the DNS subtrees it may sign
    for (None: any name)."""
    x509, hashes, serialization, ec, NameOID = crypto()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sandlock ephemeral HTTPS CA"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandlock")])
    now = _now()
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + EPHEMERAL_LIFETIME)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=True,
                   crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if dns_names:
        builder = builder.add_extension(x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(n) for n in dns_names],
            excluded_subtrees=[x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
                               x509.IPAddress(ipaddress.ip_network("::/0"))]), critical=True)
    cert = builder.sign(key, hashes.SHA256())
    enc = serialization.Encoding.PEM
    return cert.public_bytes(enc), key.private_bytes(
        enc, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def constraint_names(hosts: list[str]) -> tuple[str, ...] | None:
    """The DNS subtrees for the allow rules' hosts, None when one is `*`
    (or a host is an IP literal: the proxy mints for hostnames only, but a
    constraint would then say nothing useful)."""
    out: list[str] = []
    for h in hosts:
        if h == "*":
            return None
        name = h[2:] if h.startswith("*.") else h
        try:
            ipaddress.ip_address(name.strip("[]"))
            continue
        except ValueError:
            pass
        if name not in out:
            out.append(name)
    return tuple(out) or None


class LeafMinter:
    """Leaf certificates signed by one CA, for the proxy (supervisor side)."""

    def __init__(self, cert_pem: bytes, key_pem: bytes, location: str | None = None):
        x509, hashes, serialization, ec, NameOID = crypto(location)
        self._x509, self._hashes, self._oid = x509, hashes, NameOID
        self._enc = serialization
        self.ca = x509.load_pem_x509_certificate(cert_pem)
        self.ca_key = serialization.load_pem_private_key(key_pem, password=None)
        self.key = ec.generate_private_key(ec.SECP256R1())  # one leaf key per run
        self.key_pem = self.key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def leaf(self, hostname: str) -> bytes:
        """The PEM chain (leaf then CA) for `hostname`."""
        x509, NameOID = self._x509, self._oid
        now = _now()
        ca_not_after = getattr(self.ca, "not_valid_after_utc", None) \
            or self.ca.not_valid_after.replace(tzinfo=datetime.timezone.utc)
        cert = (x509.CertificateBuilder()
                .subject_name(x509.Name([
                    x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sandlock interception")]))
                .issuer_name(self.ca.subject)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - BACKDATE)
                .not_valid_after(min(now + LEAF_LIFETIME, ca_not_after))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self.ca_key.public_key()), critical=False)
                .sign(self.ca_key, self._hashes.SHA256()))
        enc = self._enc.Encoding.PEM
        return cert.public_bytes(enc) + self.ca.public_bytes(enc)
