"""One-time enrolment tokens, and the device identity service built on them and the fleet CA.

An operator asks the admin API for a token naming a device id; the token is shown once and kept only as its
sha256. The device sends it with a CSR (``tandem edge enroll``); the hub checks the token (known, not used,
not expired), signs the CSR under the token's device id, marks the token used, and rewrites the broker's
ACL. Revoking does the reverse and cuts the device's live MQTT session.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from cloud.errors import EnrolmentRefused, PkiError
from cloud.metrics import HubMetrics
from cloud.security.broker import BrokerControl
from cloud.security.pki import RESERVED_NAMES, FleetCA
from common.files import write_atomic
from common.tls import common_name, load_certificate
from protocol.topics import validate_device_id

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "tdm-enrol-"
MAX_CSR_BYTES = 16 * 1024


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Enrolments:
    """The tokens, in ``<pki dir>/enrolments.json`` (hashes only), one writer at a time."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = Path(folder) / "enrolments.json"
        self._lock_path = Path(folder) / ".enrolments.lock"
        self._clock = clock

    def create(self, device_id: str, ttl_s: float, by: str) -> str:
        validate_device_id(device_id)
        if device_id in RESERVED_NAMES:
            raise PkiError(f"{device_id!r} is a service's name, not a device id")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._clock()
        with self._locked() as entries:
            entries[:] = [e for e in entries if e["expires_at"] > now and e["used_at"] is None]  # drop the dead
            entries.append(
                {
                    "token_sha256": _sha256(token),
                    "device_id": device_id,
                    "expires_at": now + ttl_s,
                    "created_by": by,
                    "used_at": None,
                }
            )
        return token

    def redeem(self, token: str, use: Callable[[str], bytes]) -> bytes:
        """Call ``use(device_id)`` for a valid token and mark it used if that returns; EnrolmentRefused if not."""
        digest = _sha256(token)
        now = self._clock()
        with self._locked() as entries:
            entry = next((e for e in entries if secrets.compare_digest(e["token_sha256"], digest)), None)
            if entry is None:
                raise EnrolmentRefused("unknown enrolment token")
            if entry["used_at"] is not None:
                raise EnrolmentRefused(f"this enrolment token was used already (for {entry['device_id']})")
            if entry["expires_at"] <= now:
                raise EnrolmentRefused(f"this enrolment token expired (it was for {entry['device_id']})")
            result = use(entry["device_id"])
            entry["used_at"] = now
        return result

    @contextmanager
    def _locked(self) -> Iterator[list[dict[str, Any]]]:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                entries: list[dict[str, Any]] = json.loads(self._path.read_text()) if self._path.exists() else []
                yield entries
                write_atomic(self._path, json.dumps(entries, indent=1).encode())
                self._path.chmod(0o600)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Enrolled:
    device_id: str
    certificate_pem: bytes
    ca_pem: bytes


class Identities:
    """Enrol and revoke devices: the CA, the tokens and the broker, kept in step."""

    def __init__(
        self,
        ca: FleetCA,
        broker: Optional[BrokerControl],
        metrics: HubMetrics,
        audit: Callable[[str, str, str, dict[str, Any]], None],
        token_ttl_s: float = 3600.0,
    ) -> None:
        """``audit(who, action, target, detail)`` records each change with who made it."""
        self.ca = ca
        self.enrolments = Enrolments(ca.folder)
        self._broker = broker
        self._metrics = metrics
        self._audit = audit
        self._token_ttl_s = token_ttl_s

    def token(self, device_id: str, by: str, ttl_s: Optional[float] = None) -> str:
        ttl_s = ttl_s or self._token_ttl_s
        token = self.enrolments.create(device_id, ttl_s, by)
        self._metrics.identities.labels(event="token").inc()
        self._audit(by, "enrolment_token", device_id, {"ttl_s": ttl_s})
        logger.info("enrolment token for %s made by %s", device_id, by)
        return token

    def enrol(self, token: str, csr: bytes) -> Enrolled:
        if len(csr) > MAX_CSR_BYTES:
            self._metrics.identity_refusals.labels(reason="enrolment").inc()
            raise EnrolmentRefused(f"a CSR of {len(csr)} bytes; at most {MAX_CSR_BYTES}")
        try:
            certificate = self.enrolments.redeem(token, lambda device_id: self.ca.sign_device(csr, device_id))
        except (EnrolmentRefused, PkiError) as exc:
            self._metrics.identity_refusals.labels(reason="enrolment").inc()
            logger.warning("enrolment refused: %s", exc)
            raise
        device_id = common_name(certificate)
        self._sync_broker()
        self._metrics.identities.labels(event="enrolled").inc()
        self._audit(device_id, "enrolled", device_id, {"serial": f"{load_certificate(certificate).serial_number:x}"})
        logger.info("device %s enrolled", device_id)
        return Enrolled(device_id, certificate, self.ca.ca_path.read_bytes())

    def revoke(self, device_id: str, by: str) -> list[int]:
        """Revoke the device's certificates, rewrite the ACL without it, reload the broker, cut its session."""
        serials = self.ca.revoke(device_id)
        self._audit(by, "revoked", device_id, {"serials": [f"{s:x}" for s in serials]})
        self._sync_broker()
        if self._broker is not None:
            self._broker.cut(device_id)
        self._metrics.identities.labels(event="revoked").inc()
        logger.warning("device %s revoked (%d certificates)", device_id, len(serials))
        return serials

    def refresh_crl(self) -> None:
        """A new CRL (each is valid a week; the hub writes one a day and at start) and a broker reload, so that
        neither Mosquitto nor a device ever meets an expired one, which would refuse every device."""
        self.ca.write_crl()
        self._sync_broker()

    def _sync_broker(self) -> None:
        if self._broker is not None:
            self._broker.sync(self.ca.devices())
