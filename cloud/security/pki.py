"""The fleet CA: it certifies each device's key under its device id, and the hub's and broker's own.

    <pki dir>/ca.key       the CA's private key (0600); apart from the bundle-signing keys (cloud.fleet.keys)
    <pki dir>/ca.pem       the CA certificate: what the broker, the hub and every device trust
    <pki dir>/server.pem   the certificate the broker's TLS listeners and the hub's device gRPC port present
    <pki dir>/services-ca.key, services-ca.pem
                           a second CA, for the hub's own client certificate only: the broker's hub listener
                           trusts it alone, so no device certificate ever opens that listener
    <pki dir>/hub.pem      the hub's client certificate (CN tandem-hub), from the services CA
    <pki dir>/crl.pem      the revocation list, rewritten on every revocation (Mosquitto's crlfile)
    <pki dir>/issued.json  every certificate issued: serial, name, kind, expiry, revocation

A device's key is made on the device and never leaves it: it sends a CSR (``tandem edge enroll``), and
``sign_device`` returns a certificate whose CN is the device id the operator's enrolment token names,
whatever name the CSR asked for. A device's new certificate supersedes its older ones, which are revoked.
Everything here is ``cryptography``; concurrent writers (the hub and ``tandem hub pki``) take a file lock.
"""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cloud.errors import InvalidCsr, PkiError
from common.files import write_atomic
from common.tls import TlsFiles, key_pem, new_key, write_key
from protocol.topics import validate_device_id

HUB_NAME = "tandem-hub"
SERVER_NAME = "tandem-server"
RESERVED_NAMES = frozenset({HUB_NAME, SERVER_NAME})
CA_DAYS = 3650
DEVICE_DAYS = 365
SERVICE_DAYS = 825


@dataclass(frozen=True)
class Issued:
    serial: int
    name: str
    kind: str  # "device" or "service"
    not_after: float
    revoked_at: Optional[float] = None


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tandem"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


class FleetCA:
    """The CA in ``folder``; ``FleetCA.init`` makes one, ``FleetCA(folder)`` opens it (PkiError if none)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        if not (self.folder / "ca.pem").exists() or not (self.folder / "ca.key").exists():
            raise PkiError(f"{self.folder}: no fleet CA; run tandem hub pki init")

    # -- files ------------------------------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def crl_path(self) -> Path:
        return self.folder / "crl.pem"

    def server_files(self) -> TlsFiles:
        return TlsFiles(ca_path=self.ca_path, cert_path=self.folder / "server.pem", key_path=self.folder / "server.key")

    def hub_files(self) -> TlsFiles:
        return TlsFiles(ca_path=self.ca_path, cert_path=self.folder / "hub.pem", key_path=self.folder / "hub.key")

    @classmethod
    def init(cls, folder: Path, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = CA_DAYS) -> FleetCA:
        """A new CA, the server certificate for ``hosts`` (names or IP addresses), the hub's client certificate
        and an empty CRL. Refuses to overwrite a CA that exists."""
        folder = Path(folder)
        if (folder / "ca.key").exists():
            raise PkiError(f"{folder}: a fleet CA exists already; remove the folder to start over")
        folder.mkdir(parents=True, exist_ok=True)
        _new_ca(folder / "ca", "tandem fleet CA", days)
        _new_ca(folder / "services-ca", "tandem services CA", days)
        write_atomic(folder / "issued.json", b'{"certificates": []}')
        ca = cls(folder)
        ca.issue_service(SERVER_NAME, folder / "server", hosts=hosts)
        ca.issue_service(HUB_NAME, folder / "hub", issuer="services-ca")
        ca.write_crl()
        return ca

    # -- issuing ----------------------------------------------------------------------------------------------

    def issue_service(
        self, name: str, stem: Path, hosts: Sequence[str] = (), days: int = SERVICE_DAYS, issuer: str = "ca"
    ) -> TlsFiles:
        """A key and certificate for a service (``stem``.key, ``stem``.pem): a server if ``hosts`` are given;
        ``issuer`` "services-ca" for a client of the broker's hub listener."""
        key = new_key()
        cert = self._sign(key.public_key(), name, "service", days, hosts=hosts, issuer=issuer)
        write_key(stem.with_suffix(".key"), key)
        write_atomic(stem.with_suffix(".pem"), cert)
        return TlsFiles(ca_path=self.ca_path, cert_path=stem.with_suffix(".pem"), key_path=stem.with_suffix(".key"))

    def sign_device(self, csr: bytes, device_id: str, days: int = DEVICE_DAYS) -> bytes:
        """The PEM certificate for a device's CSR, its CN set to ``device_id``; older ones are revoked."""
        validate_device_id(device_id)
        if device_id in RESERVED_NAMES:
            raise PkiError(f"{device_id!r} is a service's name, not a device id")
        try:
            request = x509.load_pem_x509_csr(csr)
        except ValueError as exc:
            raise InvalidCsr(f"not a PEM certificate signing request (CSR): {exc}") from exc
        if not request.is_signature_valid:
            raise InvalidCsr("the CSR's signature does not verify: it was not made with the key it carries")
        public = request.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            if public.key_size < 2048:
                raise InvalidCsr(f"an RSA key of {public.key_size} bits is too weak (2048 at least)")
        elif not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in ("secp256r1", "secp384r1"):
            raise InvalidCsr("the CSR's key must be EC P-256/P-384 or RSA 2048+")
        with self._locked():
            superseded = [c.serial for c in self.issued() if c.name == device_id and c.revoked_at is None]
            cert = self._sign(public, device_id, "device", days)
            if superseded:
                self._revoke_serials(superseded)
        return cert

    def issue_device_for_tests(
        self, device_id: str, days: int = DEVICE_DAYS, not_before: Optional[datetime.datetime] = None
    ) -> tuple[bytes, bytes]:
        """(key PEM, certificate PEM) made here, not on a device: for tests and ``tandem demo --secure``,
        where the 'device' is this machine anyway. ``not_before`` in the past with few ``days`` makes an
        expired one."""
        key = new_key()
        with self._locked():
            cert = self._sign(key.public_key(), device_id, "device", days, not_before=not_before)
        return key_pem(key), cert

    def _sign(
        self,
        public: Any,
        name: str,
        kind: str,
        days: int,
        hosts: Sequence[str] = (),
        not_before: Optional[datetime.datetime] = None,
        issuer: str = "ca",
    ) -> bytes:
        ca_key, ca_cert = self._ca(issuer)
        start = not_before or (_now() - datetime.timedelta(minutes=5))
        end = start + datetime.timedelta(days=days)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if hosts else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        self._record(Issued(cert.serial_number, name, kind, end.timestamp()))
        return cert.public_bytes(serialization.Encoding.PEM)

    # -- revoking ---------------------------------------------------------------------------------------------

    def revoke(self, name: str) -> list[int]:
        """Revoke every certificate ``name`` holds and rewrite the CRL; the serials revoked (PkiError if none)."""
        with self._locked():
            serials = [c.serial for c in self.issued() if c.name == name and c.revoked_at is None]
            if not serials:
                raise PkiError(f"{name!r} holds no certificate that is not revoked already")
            self._revoke_serials(serials)
        return serials

    def _revoke_serials(self, serials: Sequence[int]) -> None:
        now = _now().timestamp()
        ledger = self._ledger()
        for entry in ledger["certificates"]:
            if entry["serial"] in serials and entry["revoked_at"] is None:
                entry["revoked_at"] = now
        self._write_ledger(ledger)
        self.write_crl()

    def write_crl(self) -> None:
        """The CRL of every revoked certificate that has not expired yet, valid for a week (rewritten often)."""
        ca_key, ca_cert = self._ca()
        now = _now()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(ca_cert.subject)
            .last_update(now - datetime.timedelta(minutes=5))
            .next_update(now + datetime.timedelta(days=7))
        )
        for cert in self.issued():
            if cert.revoked_at is not None and cert.not_after > now.timestamp():
                builder = builder.add_revoked_certificate(
                    x509.RevokedCertificateBuilder()
                    .serial_number(cert.serial)
                    .revocation_date(datetime.datetime.fromtimestamp(cert.revoked_at, datetime.timezone.utc))
                    .build()
                )
        crl = builder.sign(ca_key, hashes.SHA256())
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM))

    # -- reading ----------------------------------------------------------------------------------------------

    def issued(self) -> list[Issued]:
        return [Issued(**entry) for entry in self._ledger()["certificates"]]

    def devices(self) -> list[str]:
        """Device ids holding a certificate that is neither revoked nor expired: whom the broker's ACL names."""
        now = _now().timestamp()
        return sorted(
            {c.name for c in self.issued() if c.kind == "device" and c.revoked_at is None and c.not_after > now}
        )

    def revoked_serials(self) -> frozenset[int]:
        return frozenset(c.serial for c in self.issued() if c.revoked_at is not None)

    def _ca(self, stem: str = "ca") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        try:
            key = serialization.load_pem_private_key((self.folder / f"{stem}.key").read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate((self.folder / f"{stem}.pem").read_bytes())
        except (OSError, ValueError) as exc:
            raise PkiError(f"{self.folder}: the CA {stem} cannot be read: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.folder}/{stem}.key is not the EC key tandem hub pki init writes")
        return key, cert

    def _ledger(self) -> dict[str, Any]:
        try:
            return dict(json.loads((self.folder / "issued.json").read_text()))
        except (OSError, ValueError) as exc:
            raise PkiError(f"{self.folder}/issued.json cannot be read: {exc}") from exc

    def _write_ledger(self, ledger: dict[str, Any]) -> None:
        write_atomic(self.folder / "issued.json", json.dumps(ledger, indent=1).encode())

    def _record(self, issued: Issued) -> None:
        ledger = self._ledger()
        ledger["certificates"].append(asdict(issued))
        self._write_ledger(ledger)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time across processes (the hub's API and the CLI)."""
        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


def _new_ca(stem: Path, name: str, days: int) -> None:
    """A self-signed CA: ``stem``.key (0600) and ``stem``.pem."""
    key = new_key()
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_key(stem.with_suffix(".key"), key)
    write_atomic(stem.with_suffix(".pem"), cert.public_bytes(serialization.Encoding.PEM))


def verify_issued_by(ca_pem: bytes, cert_pem: bytes) -> None:
    """Raise PkiError unless ``cert_pem`` was signed by the CA in ``ca_pem`` (used by tests and the CLI)."""
    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    public = ca.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey) or cert.signature_hash_algorithm is None:
        raise PkiError("only the EC CAs tandem hub pki init makes can be checked here")
    try:
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except InvalidSignature as exc:
        raise PkiError("the certificate was not issued by this CA") from exc


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)
