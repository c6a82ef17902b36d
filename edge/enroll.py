"""``tandem edge enroll``: make this device's key, have the hub's fleet CA certify it, keep both here.

    key.pem   made here (P-256, mode 0600); it never leaves the device
    cert.pem  the certificate the hub returned: CN = the device id the operator's token names
    ca.pem    the fleet CA: the only issuer the device trusts for the broker and the hub

A CSR and a one-time token go up (``POST /v1/enrol``); a certificate comes down. The device's config then
names the three files under ``tls`` and its MQTT and gRPC links use them. Enrolling again (a new token)
makes a new key; the hub revokes the device's older certificates, so restart the runtime afterwards.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from cryptography.exceptions import InvalidSignature

from common.errors import ConfigError
from common.files import write_atomic
from common.tls import TlsError, TlsFiles, common_name, csr_pem, load_certificate, new_key, write_key
from edge.config import EdgeConfig
from edge.errors import EdgeError

TIMEOUT_S = 30.0


class EnrolmentFailed(EdgeError):
    """The hub refused the enrolment, or could not be reached; the message says which and why."""


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    files: TlsFiles


def enroll(hub_url: str, token: str, folder: Path, name: str = "device", ca_path: Optional[Path] = None) -> Enrolled:
    """Enrol with the hub at ``hub_url``; ``ca_path`` is the fleet CA to check an https hub against."""
    key = new_key()
    body = json.dumps({"token": token, "csr_pem": csr_pem(key, name).decode()}).encode()
    request = urllib.request.Request(
        hub_url.rstrip("/") + "/v1/enrol", data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    context = ssl.create_default_context(cafile=str(ca_path)) if ca_path is not None else None
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:500]
        raise EnrolmentFailed(f"the hub refused the enrolment ({exc.code}): {detail}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise EnrolmentFailed(f"enrolment at {hub_url} failed: {exc}") from exc
    certificate = answer["certificate_pem"].encode()
    ca = ca_path.read_bytes() if ca_path is not None else answer["ca_pem"].encode()
    try:
        load_certificate(certificate).verify_directly_issued_by(load_certificate(ca))
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise EnrolmentFailed(f"the certificate the hub returned was not issued by the fleet CA: {exc}") from exc
    device_id = common_name(certificate)
    folder.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(ca_path=folder / "ca.pem", cert_path=folder / "cert.pem", key_path=folder / "key.pem")
    write_key(files.key_path, key)
    write_atomic(files.cert_path, certificate)
    write_atomic(files.ca_path, ca)
    return Enrolled(device_id, files)


def check_identity(config: EdgeConfig) -> None:
    """ConfigError unless the certificate under ``tls`` (if any) is readable and names this device."""
    if config.tls is None:
        return
    try:
        identity = config.tls.identity()
        config.tls.read()
    except TlsError as exc:
        raise ConfigError(f"tls: {exc}") from exc
    if identity != config.device_id:
        raise ConfigError(
            f"tls: the certificate {config.tls.cert_path} is {identity!r}'s, but this device is {config.device_id!r}"
        )
