"""TLS for every link a device or the hub opens: the files each side holds, its keys and CSRs, its identity.

A device's identity is the common name (CN) of the certificate the fleet CA issued it: its device id.
The hub's PKI (``cloud.security.pki``) issues and revokes; this module is what both ends share, all of it
through ``cryptography`` (no hand-written crypto). Runs on Python 3.10 (the edge imports it).
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import Field

from common.config import StrictModel
from common.errors import TandemError
from common.files import write_atomic


class TlsError(TandemError):
    """A TLS file that is missing, unreadable or not what it should be."""


class TlsFiles(StrictModel):
    """The three files of one TLS identity: whom to trust, who I am, and my key."""

    ca_path: Path = Field(description="PEM of the fleet CA: the only issuer whose certificates are trusted")
    cert_path: Path = Field(description="PEM of this side's certificate, issued by the fleet CA")
    key_path: Path = Field(description="PEM of this side's private key (mode 0600; it never leaves the machine)")

    def read(self) -> tuple[bytes, bytes, bytes]:
        """(ca, cert, key) as bytes; TlsError names the file that cannot be read."""
        out = []
        for path in (self.ca_path, self.cert_path, self.key_path):
            try:
                out.append(Path(path).read_bytes())
            except OSError as exc:
                raise TlsError(f"TLS file {path}: {exc.strerror or exc}") from exc
        return out[0], out[1], out[2]

    def identity(self) -> str:
        """The CN of this side's certificate."""
        return common_name(self.read()[1])


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: small, fast on a Jetson, and accepted by Mosquitto, gRPC and browsers alike."""
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only."""
    write_atomic(path, key_pem(key))
    path.chmod(0o600)


def csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A certificate signing request for ``name`` (the CN), signed by ``key``: what goes up at enrolment."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def load_certificate(pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise TlsError(f"not a PEM certificate: {exc}") from exc


def common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate (a device's id, or a service's name)."""
    names = load_certificate(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(names) != 1:
        raise TlsError(f"a certificate must carry exactly one common name, not {len(names)}")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def client_context(files: TlsFiles, server_hostname_check: bool = True) -> ssl.SSLContext:
    """An SSL context for a client that presents ``files``' certificate and trusts only the fleet CA."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca_path))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = server_hostname_check
    try:
        context.load_cert_chain(str(files.cert_path), str(files.key_path))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"TLS files {files.cert_path}, {files.key_path}: {exc}") from exc
    return context
