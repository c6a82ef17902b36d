"""A secured hub without Ray (``Hub`` on a ``LocalPool``, as in test_hub_local), Mosquitto from the shipped
config with TLS, certificates made here: enrolment through the admin API, a real device escalating over gRPC
with its certificate and getting verdicts over MQTT with TLS, and every way in that must be refused."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import httpx
import pytest

from cloud.config import FleetConfig, HubConfig, TenantConfig
from cloud.hub import Hub, LocalPool
from cloud.security.pki import FleetCA
from common.tls import TlsFiles
from edge.app import EdgeRuntime
from edge.config import MqttConfig
from edge.enroll import EnrolmentFailed, enroll
from edge.judge import TraceState
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.broker import free_port
from tests.integration.conftest import edge_config
from tests.integration.test_end_to_end import escalated
from tests.integration.test_security_mqtt import _self_signed
from tests.support.fleet import HttpThread, HubThread, operator
from tests.support.images import png
from tests.support.secure import SecureFleet, secure_fleet

ADMIN = {"Authorization": "Bearer admin-token"}
VIEWER = {"Authorization": "Bearer viewer-token"}
LABELS = tuple(str(d) for d in range(10))


@dataclass
class SecuredHub:
    fleet: SecureFleet
    hub: Hub
    api: httpx.Client
    url: str
    grpc_port: int


@pytest.fixture(scope="module")
def secured(demo_assets, tmp_path_factory) -> Iterator[SecuredHub]:
    work = tmp_path_factory.mktemp("secure-hub")
    with secure_fleet() as fleet:
        http_port, grpc_port = free_port(), free_port()
        config = HubConfig(
            model_path=demo_assets / "models" / "digits-strong.onnx",
            mqtt_port=fleet.hub_port,
            http_port=http_port,
            trace_store_path=work / "hub.db",
            tenants={"acme": TenantConfig(devices=["acme-*"])},
            fleet=FleetConfig(
                operators={
                    "root": operator("admin-token"),
                    "watcher": operator("viewer-token", "viewer"),
                    "acme-admin": operator("acme-token").model_copy(update={"tenant": "acme"}),
                }
            ),
            security=fleet.security(grpc_port),
        )
        runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
        with runner as hub, HttpThread(hub.http_app(), http_port):
            url = f"http://127.0.0.1:{http_port}"
            with httpx.Client(base_url=url, timeout=30) as api:
                _wait_for_port(grpc_port)
                yield SecuredHub(fleet, hub, api, url, grpc_port)


def _wait_for_port(port: int) -> None:
    from tandem.broker import wait_for_port

    assert wait_for_port("127.0.0.1", port, 10), "the device gRPC port never opened"


def token_for(secured: SecuredHub, device_id: str) -> str:
    reply = secured.api.post("/v1/admin/enrolments", json={"device_id": device_id}, headers=ADMIN)
    assert reply.status_code == 200, reply.text
    return reply.json()["token"]


def enrolled(secured: SecuredHub, device_id: str, tmp_path) -> TlsFiles:
    return enroll(secured.url, token_for(secured, device_id), tmp_path / device_id).files


def request_bytes(device_id: str) -> tuple[str, bytes]:
    trace_id = new_trace_id()
    local = Prediction("weak", "1", LABELS, (0.1,) * 10)
    image = EncodedImage("image/png", png(28, 28), 28, 28)
    return trace_id, EscalationRequest(
        trace_id, device_id, local, image, deadline_ms=5000
    ).to_proto().SerializeToString()


def channel(secured: SecuredHub, files: TlsFiles | None, with_cert: bool = True) -> grpc.Channel:
    target = f"127.0.0.1:{secured.grpc_port}"
    if files is None:
        return grpc.insecure_channel(target)
    ca, cert, key = files.read()
    credentials = grpc.ssl_channel_credentials(ca, key, cert) if with_cert else grpc.ssl_channel_credentials(ca)
    return grpc.secure_channel(target, credentials)


def escalate(ch: grpc.Channel, payload: bytes) -> None:
    ch.unary_unary("/tandem.v1.Escalation/Escalate")(payload, timeout=10)


def test_an_enrolled_device_escalates_over_tls_and_gets_every_verdict(secured, demo_assets, tmp_path):
    files = enrolled(secured, "cam-secure", tmp_path)
    assert files.identity() == "cam-secure"
    assert (files.key_path.stat().st_mode & 0o777) == 0o600
    config = edge_config(
        tmp_path, demo_assets, _Grpc(secured.grpc_port), secured.fleet.broker.port, device_id="cam-secure"
    )
    config = config.model_copy(update={"tls": files, "mqtt": MqttConfig(port=secured.fleet.broker.port)})
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=60)
        assert runtime.wait_resolved(60)
        sent_up = escalated(runtime)
    assert len(sent_up) > 3
    assert all(t.state is TraceState.COMPLETE and t.cloud_label is not None for t in sent_up)
    audit = secured.api.get("/v1/admin/audit", headers=ADMIN).json()
    actions = [(e["who"], e["action"], e["target"]) for e in audit if e["target"] == "cam-secure"]
    assert ("root", "enrolment_token", "cam-secure") in actions and ("cam-secure", "enrolled", "cam-secure") in actions


class _Grpc:
    def __init__(self, port: int) -> None:
        self.grpc_port = port


def test_enrolment_tokens_are_one_time_admin_only_and_checked(secured, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "cam-x"}).status_code == 401
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "cam-x"}, headers=VIEWER).status_code == 403
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "tandem-hub"}, headers=ADMIN).status_code == 409
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "a/b#"}, headers=ADMIN).status_code in (400, 422)
    token = token_for(secured, "cam-once")
    enroll(secured.url, token, tmp_path / "first")
    with pytest.raises(EnrolmentFailed, match=r"403.*used already"):
        enroll(secured.url, token, tmp_path / "second")
    with pytest.raises(EnrolmentFailed, match=r"403.*unknown"):
        enroll(secured.url, "tdm-enrol-made-up", tmp_path / "third")
    bad_csr = secured.api.post("/v1/enrol", json={"token": token_for(secured, "cam-csr"), "csr_pem": "not a csr"})
    assert bad_csr.status_code == 400 and "CSR" in bad_csr.text
    huge = secured.api.post(
        "/v1/enrol", content=b"{" + b" " * (70 * 1024) + b"}", headers={"Content-Type": "application/json"}
    )
    assert huge.status_code == 413
    malformed = secured.api.post("/v1/enrol", content=b"{nope", headers={"Content-Type": "application/json"})
    assert malformed.status_code == 422
    expired = secured.api.post("/v1/admin/enrolments", json={"device_id": "cam-late", "ttl_s": 0.2}, headers=ADMIN)
    time.sleep(0.4)
    with pytest.raises(EnrolmentFailed, match=r"403.*expired"):
        enroll(secured.url, expired.json()["token"], tmp_path / "late")
    acme = {"Authorization": "Bearer acme-token"}
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "acme-7"}, headers=acme).status_code == 200
    assert secured.api.post("/v1/admin/enrolments", json={"device_id": "cam-7"}, headers=acme).status_code == 403
    assert secured.api.post("/v1/admin/devices/cam-once/revoke", headers=acme).status_code == 403
    metrics = secured.api.get("/metrics").text
    assert 'tandem_hub_identity_refusals_total{reason="enrolment"}' in metrics
    for reason in ("unauthorized", "forbidden", "too_large", "invalid"):  # every refusal above, counted
        assert f'tandem_hub_http_refusals_total{{reason="{reason}"}}' in metrics, reason
    assert "tdm-enrol-" not in metrics and "tdm-enrol-" not in caplog.text  # no token in /metrics or the logs
    assert "admin-token" not in caplog.text


def test_grpc_refuses_every_certificate_that_must_not_get_in(secured, tmp_path):
    fleet = secured.fleet
    good = enrolled(secured, "cam-g", tmp_path)
    other_ca = FleetCA.init(tmp_path / "other-ca")
    now = datetime.datetime.now(datetime.timezone.utc)
    attempts = {
        "self_signed": channel(secured, fleet.write("g-self", *_self_signed("cam-g"))),
        "expired": channel(secured, fleet.device("cam-g", days=1, not_before=now - datetime.timedelta(days=3))),
        "other_ca": channel(secured, fleet.write("g-other", *other_ca.issue_device_for_tests("cam-g"))),
        "no_certificate": channel(secured, good, with_cert=False),
        "plain_text": channel(secured, None),
    }
    sent = []
    for name, ch in attempts.items():
        trace_id, payload = request_bytes("cam-g")
        sent.append(trace_id)
        with pytest.raises(grpc.RpcError) as error:
            escalate(ch, payload)
        assert error.value.code() is grpc.StatusCode.UNAVAILABLE, name  # the handshake failed: no call at all
        ch.close()
    assert all(secured.hub.store.get(trace_id) is None for trace_id in sent)


def test_a_device_cannot_speak_for_another_and_revocation_is_immediate(secured, tmp_path):
    files = enrolled(secured, "cam-v", tmp_path)
    with channel(secured, files) as ch:
        trace_id, payload = request_bytes("cam-other")
        with pytest.raises(grpc.RpcError) as error:
            escalate(ch, payload)
        assert error.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert "cam-v" in (error.value.details() or "")
        assert secured.hub.store.get(trace_id) is None
        own_trace, payload = request_bytes("cam-v")
        escalate(ch, payload)
        assert secured.hub.store.get(own_trace) is not None
        reply = secured.api.post("/v1/admin/devices/cam-v/revoke", headers=ADMIN)
        assert reply.status_code == 200 and reply.json()["revoked"]
        late_trace, payload = request_bytes("cam-v")
        with pytest.raises(grpc.RpcError) as error:
            escalate(ch, payload)  # the same open connection
        assert error.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert secured.hub.store.get(late_trace) is None
    assert secured.api.post("/v1/admin/devices/cam-v/revoke", headers=VIEWER).status_code == 403
    metrics = secured.api.get("/metrics").text
    assert 'tandem_hub_identity_refusals_total{reason="impostor"} 1.0' in metrics
    assert 'tandem_hub_identity_refusals_total{reason="revoked"} 1.0' in metrics
