"""``tandem.v1.Escalation`` for devices over TLS with client certificates, served from the hub's own process.

Ray Serve's gRPC proxy listens in plain text only (ray-project/ray#34103), so a secured hub turns the
Escalation service off there and serves it here, on ``security.grpc_port``, from the same ``Hub`` the
proxy would have reached (one hop fewer). Each call is checked three ways before it is read:

- the TLS handshake: no certificate, a self-signed one, an expired one or one from another CA never
  gets a call through (gRPC's own verification against the fleet CA);
- revocation: the certificate's serial is looked up in the CRL the fleet CA writes (re-read when it
  changes), so a device revoked a moment ago is refused on its next call, on a connection already open;
- identity: the request's ``device_id`` must be the certificate's CN (``cloud.ingress.grpc``).

Several Ingress replicas on one node share the port (gRPC sets SO_REUSEPORT); the kernel spreads the
connections.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import grpc
from cryptography import x509

from cloud.escalations import EscalationService
from cloud.ingress import grpc as grpc_ingress
from common.tls import TlsError, TlsFiles, common_name, load_certificate
from protocol._generated.tandem.v1 import tandem_pb2 as pb

logger = logging.getLogger(__name__)


class RevocationList:
    """The revoked serials of a CRL file, read again whenever the file changes."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: Optional[tuple[int, int]] = None
        self._serials: frozenset[int] = frozenset()

    def __contains__(self, serial: int) -> bool:
        try:
            stat = self._path.stat()
        except OSError:
            logger.error("CRL %s cannot be read: every device is refused until it can", self._path)
            return True
        if (stat.st_mtime_ns, stat.st_size) != self._stamp:
            try:
                crl = x509.load_pem_x509_crl(self._path.read_bytes())
            except (OSError, ValueError) as exc:
                logger.error("CRL %s cannot be read (%s): every device is refused until it can", self._path, exc)
                return True
            self._serials = frozenset(entry.serial_number for entry in crl)
            self._stamp = (stat.st_mtime_ns, stat.st_size)
        return serial in self._serials


class DeviceGateway:
    """The TLS gRPC server; ``start()`` and ``stop()`` on the hub's event loop."""

    def __init__(
        self, service: EscalationService, port: int, server_files: TlsFiles, crl_path: Path, host: str = "[::]"
    ) -> None:
        self._service = service
        self._address = f"{host}:{port}"
        self._files = server_files
        self._revoked = RevocationList(crl_path)
        self._server: Optional[grpc.aio.Server] = None

    async def start(self) -> None:
        ca, cert, key = self._files.read()
        limit = self._service.limits.max_request_bytes
        server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        )
        handlers = {
            "Escalate": grpc.unary_unary_rpc_method_handler(
                self._escalate, response_serializer=pb.EscalationAck.SerializeToString
            ),
            "EscalateAndWait": grpc.unary_unary_rpc_method_handler(
                self._escalate_and_wait, response_serializer=pb.EscalationResult.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(grpc_ingress.SERVICE, handlers),))
        credentials = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
        if server.add_secure_port(self._address, credentials) == 0:
            raise OSError(f"device gRPC: cannot listen on {self._address}")
        await server.start()
        self._server = server
        logger.info("device gRPC with client certificates on %s", self._address)

    async def stop(self, grace_s: float = 2.0) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    def _identity(self, context: Any) -> Optional[str]:
        """The caller's device id, or None with the status set (UNAUTHENTICATED)."""
        pems = context.auth_context().get("x509_pem_cert") or []
        reason = "no_certificate"
        if pems:
            try:
                cert = load_certificate(pems[0])
                if cert.serial_number not in self._revoked:
                    return common_name(pems[0])
                reason = "revoked"
            except TlsError as exc:
                logger.warning("device gRPC: unreadable client certificate: %s", exc)
        self._service.metrics.identity_refusals.labels(reason=reason).inc()
        context.set_code(grpc.StatusCode.UNAUTHENTICATED)
        context.set_details(f"client certificate refused: {reason.replace('_', ' ')}")
        logger.warning("device gRPC: call from %s refused: %s", context.peer(), reason)
        return None

    async def _escalate(self, payload: bytes, context: Any) -> pb.EscalationAck:
        identity = self._identity(context)
        if identity is None:
            return pb.EscalationAck()
        return await grpc_ingress.escalate(self._service, payload, context, identity)

    async def _escalate_and_wait(self, payload: bytes, context: Any) -> pb.EscalationResult:
        identity = self._identity(context)
        if identity is None:
            return pb.EscalationResult()
        return await grpc_ingress.escalate_and_wait(self._service, payload, context, identity)
