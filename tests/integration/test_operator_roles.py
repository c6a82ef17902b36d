"""Each role tries each admin route, on a real hub's HTTP API: 401 without a valid token, 403 outside the role or
the operator's groups, and through otherwise (the route may then say 404 or 409 about the request itself)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import paho.mqtt.client as mqtt
import pytest

from cloud.config import FleetConfig, HubConfig
from cloud.hub import Hub, LocalPool
from cloud.orchestrator.config import OrchestratorConfig
from protocol import fleet
from protocol.topics import Channel, DeviceTopic
from tandem.broker import free_port
from tests.support.fleet import HttpThread, HubThread, operator
from tests.support.waiting import wait_for

OPERATORS = {
    "vera": ("viewer", ()),
    "otto": ("operator", ()),
    "olga": ("operator", ("lobby",)),
    "abe": ("approver", ()),
    "ada": ("admin", ()),
}
THRESHOLD = {"tool": "set_judge_threshold", "group": "lobby", "confidence_threshold": 0.85}
MARGIN = {"judge": {"min_margin": 0.1}}


def token(name: str) -> str:
    return f"token-of-{name}"


@pytest.fixture
def hub_api(tmp_path, demo_assets, mosquitto, hub) -> Iterator[httpx.Client]:
    hub.stop()
    port = free_port()
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-roles",
        http_port=port,
        trace_store_path=tmp_path / "hub" / "hub.db",
        fleet=FleetConfig(operators={n: operator(token(n), role, groups) for n, (role, groups) in OPERATORS.items()}),
        orchestrator=OrchestratorConfig(mode="approve", llm={"enabled": False}),
    )
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner, HttpThread(runner.hub.http_app(), port), httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
        yield client


# (method, path, body, permission, groups it touches: None where no scope applies, () for a hub-wide change)
ROUTES = [
    ("GET", "/v1/devices", None, "read", None),
    ("GET", "/v1/devices/cam-nowhere", None, "read", None),
    ("GET", "/v1/traces", None, "read", None),
    ("GET", f"/v1/traces/{'0' * 32}", None, "read", None),
    ("GET", "/v1/routing", None, "read", None),
    ("GET", "/v1/models", None, "read", None),
    ("PUT", f"/v1/artifacts/{'0' * 64}", None, "models", ()),
    ("POST", "/v1/models", {"name": "m", "version": "1", "task": "classification", "artifact_sha256": "0" * 64},
     "models", ()),
    ("POST", "/v1/models/m/1/retire", None, "models", ()),
    ("GET", "/v1/admin/settings", None, "read", None),
    ("PUT", "/v1/admin/settings/group", {"name": "lobby", "settings": MARGIN}, "settings", ("lobby",)),
    ("PUT", "/v1/admin/settings/group", {"name": "gate", "settings": MARGIN}, "settings", ("gate",)),
    ("PUT", "/v1/admin/settings/all", {"name": "", "settings": {}}, "settings", ()),
    ("GET", "/v1/admin/audit", None, "read", None),
    ("POST", "/v1/admin/bundles", {"name": "m", "version": "1", "model": {"model_id": "m", "file": "m.onnx"},
                                   "files": {"m.onnx": {"sha256": "0" * 64, "role": "model"}}}, "bundles", ()),
    ("GET", "/v1/admin/rollouts", None, "read", None),
    ("POST", "/v1/admin/rollouts", {"bundle_id": "m-1", "target": {"group": "lobby"}}, "rollouts", ("lobby",)),
    ("POST", "/v1/admin/rollouts", {"bundle_id": "m-1", "target": {"tag": "outdoor"}}, "rollouts", ()),
    ("GET", "/v1/admin/orchestrator", None, "read", None),
    ("GET", "/v1/admin/orchestrator/snapshot", None, "read", None),
    ("GET", "/v1/admin/orchestrator/audit", None, "read", None),
    ("GET", "/v1/admin/proposals", None, "read", None),
    ("POST", "/v1/admin/proposals", {"action": THRESHOLD}, "propose", ("lobby",)),
    ("POST", "/v1/admin/proposals", {"action": {"tool": "set_replicas", "min_replicas": 1, "max_replicas": 2}},
     "propose", ()),
    # An intent only proposes: a scoped operator may send one; an approver within scope decides what comes of it.
    ("POST", "/v1/admin/intents", {"text": "prefer accuracy"}, "propose", None),
]  # fmt: skip
PERMISSIONS = {
    "viewer": {"read"},
    "operator": {"read", "models", "settings", "bundles", "rollouts", "propose"},
    "approver": {"read", "approve"},
    "admin": {"read", "models", "settings", "bundles", "rollouts", "propose", "approve"},
}


def allowed(name: str, permission: str, touched) -> bool:
    role, groups = OPERATORS[name]
    if permission not in PERMISSIONS[role]:
        return False
    return touched is None or not groups or (bool(touched) and set(touched) <= set(groups))


def test_each_role_on_each_admin_route(hub_api):
    for method, path, body, permission, touched in ROUTES:
        assert hub_api.request(method, path, json=body).status_code == 401, (method, path, "no token")
        wrong = {"Authorization": "Bearer not-a-token"}
        assert hub_api.request(method, path, json=body, headers=wrong).status_code == 401, (method, path)
        for name in OPERATORS:
            reply = hub_api.request(method, path, json=body, headers={"Authorization": f"Bearer {token(name)}"})
            if allowed(name, permission, touched):
                assert reply.status_code not in (401, 403), (name, method, path, reply.text)
            else:
                assert reply.status_code == 403, (name, method, path, reply.status_code, reply.text)


def test_approvals_follow_the_approvers_role_and_the_proposals_groups(hub_api):
    as_ = {name: {"Authorization": f"Bearer {token(name)}"} for name in OPERATORS}
    lobby = hub_api.post("/v1/admin/proposals", json={"action": THRESHOLD}, headers=as_["olga"]).json()
    hub_wide = {"tool": "set_replicas", "min_replicas": 1, "max_replicas": 2}
    replicas = hub_api.post("/v1/admin/proposals", json={"action": hub_wide}, headers=as_["otto"]).json()
    for proposal in (lobby, replicas):
        for name in ("vera", "otto", "olga"):  # no approve permission, whatever their groups
            reply = hub_api.post(f"/v1/admin/proposals/{proposal['proposal_id']}/reject", headers=as_[name])
            assert reply.status_code == 403, (name, reply.text)
    reply = hub_api.post(f"/v1/admin/proposals/{replicas['proposal_id']}/reject", headers=as_["abe"])
    assert reply.status_code == 409  # blocked by the guardrails (no pool to scale here): not a waiting one
    assert reply.json()["detail"].startswith(f"proposal {replicas['proposal_id']} is BLOCKED")
    assert hub_api.post("/v1/admin/proposals/nope/approve", headers=as_["ada"]).status_code == 404


def publish_reports(port: int, groups: dict[str, str]) -> None:
    """Each device's retained report, as a device publishes it at connect."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="roles-reporter")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for device_id, group in groups.items():
            report = fleet.Reported(
                device_id=device_id, sent_at=time.time(), group=group, device_class="x86_64/cpu", runtime_version="t",
                model={"model_id": "m", "version": "1", "sha256": "", "backend": "onnxruntime"},
            )  # fmt: skip
            topic = str(DeviceTopic(device_id, Channel.REPORTED))
            client.publish(topic, fleet.encode(report), qos=1, retain=True).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def test_a_scoped_operator_sees_only_their_groups_devices(hub_api, mosquitto):
    headers = {name: {"Authorization": f"Bearer {token(name)}"} for name in ("olga", "otto")}
    publish_reports(mosquitto.port, {"cam-roles-l1": "lobby", "cam-roles-g1": "gate"})

    def both() -> bool:
        found = {d["device_id"] for d in hub_api.get("/v1/devices", headers=headers["otto"]).json()}
        return {"cam-roles-l1", "cam-roles-g1"} <= found

    wait_for(both, 20, "both devices' reports")
    seen = {d["device_id"] for d in hub_api.get("/v1/devices", headers=headers["olga"]).json()}
    assert "cam-roles-l1" in seen and "cam-roles-g1" not in seen
    assert hub_api.get("/v1/devices/cam-roles-g1", headers=headers["olga"]).status_code == 404
    assert hub_api.get("/v1/devices/cam-roles-g1", headers=headers["otto"]).status_code == 200


def test_a_scoped_operators_change_is_recorded_with_their_name(hub_api):
    headers = {"Authorization": f"Bearer {token('olga')}"}
    body = {"name": "lobby", "settings": {"judge": {"confidence_threshold": 0.8}}}
    assert hub_api.put("/v1/admin/settings/group", json=body, headers=headers).status_code == 200
    audit = hub_api.get("/v1/admin/audit", headers=headers).json()
    assert audit[0]["who"] == "olga" and audit[0]["target"].endswith("lobby")
