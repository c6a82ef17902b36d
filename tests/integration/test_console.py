"""The fleet console in a real browser (Debian's chromium, driven by Playwright) against a real hub (Ray-free, on a
real HTTP server, with a real Mosquitto) and real device runtimes.

Each role logs in and sees what it may; a device appears, goes silent and comes back while the page stays open;
a rollout is started, watched and aborted from the page; a proposal is approved; a trace opens with its image and
the strong detector's boxes; hard examples are labelled and exported; 1,000 simulated devices load. Every page
is saved as a screenshot (tests/support/browser.py: ARTIFACTS).
"""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import httpx
import paho.mqtt.client as mqtt
import pytest
import yaml

from cloud.config import AlertConfig, ConsoleConfig, FleetConfig, HubConfig
from cloud.fleet.keys import init_keys
from cloud.hub import Hub, LocalPool
from cloud.orchestrator.config import OrchestratorConfig
from edge.app import EdgeRuntime
from edge.config import (
    DetectorConfig,
    EscalationConfig,
    JudgeConfig,
    ModelsConfig,
    MqttTransportConfig,
    ProbationConfig,
    SourceConfig,
)
from edge.config import FleetConfig as DeviceFleet
from protocol import fleet
from protocol.topics import Channel, DeviceTopic
from tandem.broker import MosquittoBroker, find_mosquitto, free_port
from tests.integration.conftest import edge_config, fleet_device_config
from tests.integration.test_fleet import Device
from tests.support.browser import chromium, screenshot
from tests.support.bundles import tempered
from tests.support.fleet import TOKEN, Api, EdgeProcess, HttpThread, HubThread, bundle, operator
from tests.support.waiting import wait_for

TOKENS = {"viewer": "tok-viewer", "operator": "tok-operator", "approver": "tok-approver", "admin": TOKEN}
GROUP = "console"
PAGE_TIMEOUT_MS = 30_000
BOX_FLOOR = 0.3  # the trace page draws boxes scoring this or more unless asked (console.js: BOX_FLOOR)


class Webhook:
    """A receiver for the hub's alert webhook: every JSON body POSTed to it, in order."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self, alert_id: str) -> list[str]:
        return [b["event"] for b in list(self.bodies) if b["alert_id"] == alert_id]


@dataclass
class Console:
    hub: Hub
    url: str
    api: Api
    webhook: Webhook
    work: Path
    broker_port: int

    def call(self, role: str, method: str, path: str, **kw: object) -> httpx.Response:
        """One request to the hub as ``role`` (the admin API's bearer token)."""
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=30) as c:
            return c.request(method, path, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def own_broker() -> Iterator[MosquittoBroker]:
    """A broker of this module's own: its thousand simulated devices must not queue up in the session broker for
    the persistent sessions of hubs that are not running (the session's hub would meet them all when it starts
    again, and preload models for each)."""
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed: sudo apt-get install -y mosquitto (tools/test does this as root)")
    with MosquittoBroker(free_port()) as broker:
        yield broker


@pytest.fixture(scope="module")
def console(tmp_path_factory, demo_assets, detect_models, own_broker, hub) -> Iterator[Console]:
    hub.stop()  # one Ray-free hub at a time with the session's Ray hub on this 2-core machine
    mosquitto = own_broker
    work = tmp_path_factory.mktemp("console")
    port = free_port()
    routing = work / "routing.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "digits-strong": {"path": str(demo_assets / "models" / "digits-strong.onnx")},
                    "shapes-strong": {"path": str(detect_models / "models" / "shapes-strong.onnx")},
                },
                "routes": [
                    {"name": "shapes", "when": {"model_hint": ["shapes"]}, "steps": [{"model": "shapes-strong"}]},
                    {"name": "digits", "steps": [{"model": "digits-strong"}]},
                ],
            }
        )
    )
    webhook = Webhook()
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        routing_path=routing,
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-console",
        http_port=port,
        trace_store_path=work / "hub.db",
        fleet=FleetConfig(
            check_every_s=0.5,
            silent_after_s=2.0,
            operators={f"ops-{role}": operator(token, role) for role, token in TOKENS.items()},
        ),
        orchestrator=OrchestratorConfig(mode="approve", llm={"enabled": False}),
        console=ConsoleConfig(check_every_s=0.5, alerts=AlertConfig(silent_after_s=3.0, webhook_url=webhook.url)),
    )
    init_keys(config.keys_dir(), work / "offline" / "root.pem")
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner as hub_object, HttpThread(hub_object.http_app(), port):
        api = Api(port)
        # The groups proposals name (sim-0, sim-1, sim-2: one device in three each, so the guardrails let a proposal
        # touch one), with devices whose heartbeats say their threshold in effect.
        with SimulatedFleet(mosquitto.port, 3, "sim-console", groups=3, every_s=0.5):
            wait_for(lambda: hub_object.fleet.store.get("sim-console-0002") is not None, 30, "the groups' devices")
            yield Console(hub_object, f"http://127.0.0.1:{port}", api, webhook, work, mosquitto.port)
        api.client.close()
    webhook.server.shutdown()
    webhook.server.server_close()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with chromium() as found:
        yield found


@pytest.fixture
def pages(browser) -> Iterator[object]:
    """new_page(role): a page in a browser context of its own (its own cookies), logged in as that role."""
    contexts = []

    def new_page(console: Console, role: str | None = None):
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_MS)
        page.goto(f"{console.url}/console/")
        if role is not None:
            login(page, role)
        return page

    yield new_page
    for context in contexts:
        context.close()


def login(page, role: str) -> None:
    page.fill("#token", TOKENS[role])
    page.click("#login button[type=submit]")
    page.wait_for_selector(f"#who:has-text('ops-{role} · {role}')")


def propose(console: Console, group: str, threshold: float) -> str:
    """An operator's proposal (it waits for an approver): a group's judge threshold. Returns its id."""
    action = {"tool": "set_judge_threshold", "group": group, "confidence_threshold": threshold}
    made = console.call("operator", "POST", "/v1/admin/proposals", json={"action": action, "reason": "a test"})
    assert made.status_code == 201, made.text
    return str(made.json()["proposal_id"])


# -- roles ---------------------------------------------------------------------------------------------------------


def test_each_role_logs_in_and_sees_what_it_may(console, pages):
    page = pages(console)
    page.fill("#token", "not-a-token")
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('not an operator')")

    propose(console, "sim-0", 0.64)
    seen = {}
    for role in TOKENS:
        page = pages(console, role)
        page.goto(f"{console.url}/console/#/rollouts")
        page.wait_for_selector("h1:has-text('Rollouts')")
        starts = page.query_selector("#new-rollout") is not None
        page.goto(f"{console.url}/console/#/orchestrator")
        page.wait_for_selector("h2:has-text('Waiting for approval')")
        approves = page.query_selector("button[data-step='approve']") is not None
        # What the page does not offer, the hub refuses too: the same checks as the admin API.
        refused = page.evaluate(
            """async () => (await fetch('/v1/admin/rollouts/none/abort',
                 {method: 'POST', headers: {'X-Tandem-Console': '1'}})).status"""
        )
        seen[role] = (starts, approves, refused)
        screenshot(page, f"console-orchestrator-{role}")
    assert seen == {
        "viewer": (False, False, 403),
        "operator": (True, False, 404),  # may act on rollouts: this one does not exist
        "approver": (False, True, 403),
        "admin": (True, True, 404),
    }


def test_the_cookie_alone_cannot_change_anything(console):
    """A form on another site would carry the console's cookie, but cannot add the console's header."""
    with httpx.Client(base_url=console.url, timeout=30) as client:
        assert client.post("/console/login", json={"token": "wrong"}).status_code == 401
        assert client.post("/console/login", json={"token": TOKENS["admin"]}).status_code == 200
        assert client.get("/console/api/me").json()["name"] == "ops-admin"  # the cookie reads
        forged = client.post("/v1/admin/rollouts/none/abort")
        assert forged.status_code == 403 and "X-Tandem-Console" in forged.text
        assert client.post("/v1/admin/rollouts/none/abort", headers={"X-Tandem-Console": "1"}).status_code == 404
        client.post("/console/logout", headers={"X-Tandem-Console": "1"})
        assert client.get("/console/api/me").status_code == 401


# -- a device appears, goes silent, comes back ---------------------------------------------------------------------


def test_a_device_appears_goes_silent_and_comes_back_while_the_page_is_open(console, pages, demo_assets):
    page = pages(console, "viewer")
    page.wait_for_selector("#fleet-table")
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads: the changes must come live
    config = fleet_device_config(
        console.work,
        demo_assets,
        console.broker_port,
        "cam-live-1",
        group=GROUP,
        root_key=console.hub.keys().root_public,
        fps=5.0,
    )
    device = EdgeProcess(console.work, config)
    device.start()
    try:
        page.wait_for_function("() => document.querySelector(\"tr[data-device='cam-live-1'] td.status\")"
                               "?.textContent === 'online'")  # fmt: skip
        os.kill(device.process.pid, signal.SIGSTOP)  # hung: connected, saying nothing
        page.wait_for_function("() => document.querySelector(\"tr[data-device='cam-live-1'] td.status\")"
                               "?.textContent === 'silent'")  # fmt: skip
        page.wait_for_selector("#alerts-badge:not([hidden])")
        wait_for(lambda: "raised" in console.webhook.events("silent:cam-live-1"), 30, "the webhook to hear of it")
        screenshot(page, "console-fleet-silent")
        page.goto(f"{console.url}/console/#/alerts")
        page.wait_for_selector("td:has-text('cam-live-1 is silent')")
        screenshot(page, "console-alerts")
        page.goto(f"{console.url}/console/#/fleet")
        os.kill(device.process.pid, signal.SIGCONT)
        page.wait_for_function("() => document.querySelector(\"tr[data-device='cam-live-1'] td.status\")"
                               "?.textContent === 'online'")  # fmt: skip
        wait_for(lambda: "cleared" in console.webhook.events("silent:cam-live-1"), 30, "the webhook to hear it cleared")
        assert page.evaluate("window.__sameDocument") is True
        row = page.inner_text("tr[data-device='cam-live-1']")
        assert "onnxruntime:CPUExecutionProvider" in row and GROUP in row
        page.click("a:has-text('cam-live-1')")
        page.wait_for_selector("h2:has-text('Heartbeats')")
        page.wait_for_selector("h2:has-text('Cameras') ~ table td:has-text('cam0')")
        screenshot(page, "console-device")
    finally:
        if device.process is not None:
            os.kill(device.process.pid, signal.SIGCONT)
        device.stop()


# -- a rollout: started, watched and aborted from the page ---------------------------------------------------------


@pytest.fixture
def rollout_fleet(console, demo_assets, tmp_path) -> Iterator[list[Device]]:
    made = []
    for device_id in ("cam-roll-1", "cam-roll-2"):
        device = Device(tmp_path, demo_assets, console.broker_port, device_id, GROUP)
        device.config = device.config.model_copy(
            update={
                "models": ModelsConfig(
                    root_keys=[console.hub.keys().root_public],
                    probation=ProbationConfig(frames=15, min_latency_change_ms=50),
                )
            }
        )
        device.start()
        made.append(device)
    wait_for(lambda: {"cam-roll-1", "cam-roll-2"} <= {d["device_id"] for d in console.api.get("/v1/devices")}, 30,
             "the devices")  # fmt: skip
    yield made
    for device in made:
        device.close()


def test_a_rollout_is_started_watched_and_aborted_from_the_page(console, pages, demo_assets, tmp_path, rollout_fleet):
    model = tempered(demo_assets / "models" / "digits-weak.onnx", 1.6, tmp_path / "m" / "digits-c.onnx")
    bundle_id = bundle(console.api, demo_assets, model, model, "console")
    page = pages(console, "admin")
    page.goto(f"{console.url}/console/#/rollouts")
    page.wait_for_selector("#new-rollout")
    page.select_option("#new-rollout select[name=bundle]", bundle_id)
    page.fill("#new-rollout input[name=devices]", "cam-roll-1, cam-roll-2")
    page.fill("#new-rollout input[name=waves]", "0.5, 1")
    page.fill("#new-rollout input[name=soak]", "600")  # the second wave waits: there is time to abort
    page.click("#new-rollout button[type=submit]")
    page.wait_for_selector("#rollout-state:has-text('RUNNING')")
    rollout_id = page.url.rsplit("/", 1)[-1]
    page.wait_for_selector("td .state-active")  # watched live: the first wave's device becomes active
    page.wait_for_selector("h2:has-text('Abort rules') ~ table td:has-text('failure share')")
    screenshot(page, "console-rollout")
    page.goto(f"{console.url}/console/#/fleet")
    page.wait_for_selector(f"#fleet-table td a:has-text('{rollout_id}')")  # the first wave's device
    screenshot(page, "console-fleet", docs=True)
    page.goto(f"{console.url}/console/#/rollouts/{rollout_id}")
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#rollout-actions button[data-action='abort']")
    page.wait_for_selector("#rollout-state:has-text('ABORTED')")
    audit = console.api.get("/v1/admin/audit")
    assert any(e["action"] == "rollout_abort" and e["who"] == "ops-admin" and e["target"] == rollout_id for e in audit)
    page.goto(f"{console.url}/console/#/device/cam-roll-1")
    page.wait_for_selector(f"h2:has-text('Model history') + table td:has-text('{rollout_id}')")
    page.goto(f"{console.url}/console/#/alerts")
    page.wait_for_selector(f"td:has-text('rollout {rollout_id}')")
    wait_for(lambda: "raised" in console.webhook.events(f"rollout_aborted:{rollout_id}"), 30, "the webhook")


# -- a proposal approved -------------------------------------------------------------------------------------------


def test_an_approver_approves_a_proposal_on_the_page(console, pages):
    proposal_id = propose(console, "sim-1", 0.62)
    page = pages(console, "approver")
    page.wait_for_selector("#proposals-badge:not([hidden])")
    page.goto(f"{console.url}/console/#/orchestrator")
    page.click(f"button[data-proposal='{proposal_id}'][data-step='approve']")
    page.wait_for_selector(f"h2:has-text('Applied') ~ table td:has-text('{proposal_id}')")
    screenshot(page, "console-orchestrator")
    decided = next(p for p in console.api.get("/v1/admin/proposals") if p["proposal_id"] == proposal_id)
    assert (decided["state"], decided["decided_by"]) == ("APPLIED", "ops-approver")


# -- traces, images and hard examples -----------------------------------------------------------------------------


def test_a_trace_opens_with_its_image_and_boxes_and_hard_examples_are_labelled(
    console, pages, demo_assets, detect_models, tmp_path
):
    cameras = tmp_path / "gate"
    cameras.mkdir()
    for frame in sorted((detect_models / "stream").glob("*.png"))[:40]:
        (cameras / frame.name).symlink_to(frame.resolve())
    base = edge_config(tmp_path, demo_assets, SimpleNamespace(grpc_port=1), console.broker_port, device_id="cam-gate")
    detector = DetectorConfig(kind="detection", model_path=detect_models / "models" / "shapes-light.onnx",
                              conf_threshold=0.1)  # fmt: skip
    config = base.model_copy(
        update={
            "transport": MqttTransportConfig(kind="mqtt"),
            "source": SourceConfig(kind="images", path=cameras, source_id="gate"),
            "detector": detector,
            "judge": JudgeConfig(confidence_threshold=0.0, box_floor=0.25, box_threshold=0.9, max_weak_box_share=0.0),
            "escalation": EscalationConfig(deadline_ms=20_000, image_format="jpeg", model_hint="shapes"),
            "fleet": DeviceFleet(group=GROUP, telemetry_interval_s=0.5),
        }
    )
    digits = edge_config(tmp_path, demo_assets, SimpleNamespace(grpc_port=1), console.broker_port,
                         device_id="cam-digits", threshold=0.97)  # fmt: skip
    digits = digits.model_copy(update={"transport": MqttTransportConfig(kind="mqtt")})
    for device_config in (config, digits):
        with EdgeRuntime(device_config) as runtime:
            runtime.run(max_frames=40)
            assert runtime.wait_resolved(60)

    def strong_boxes(trace: dict) -> list[dict]:
        return [b for b in trace["result"]["final"].get("boxes", []) if b.get("score", 0) >= BOX_FLOOR]

    found = console.api.get("/v1/traces?device_id=cam-gate&limit=100")
    with_boxes = [t for t in found if t["status"] == "SUCCESS" and strong_boxes(t)]
    assert with_boxes, f"no escalation of cam-gate came back with a box scoring {BOX_FLOOR} or more"
    drawn = strong_boxes(with_boxes[0])
    page = pages(console, "operator")
    page.goto(f"{console.url}/console/#/traces")
    page.fill("#trace-search input[name=device_id]", "cam-gate")
    page.click("#trace-search button[type=submit]")
    page.wait_for_selector(f"a:has-text('{with_boxes[0]['trace_id']}')")
    screenshot(page, "console-traces")
    page.click(f"a:has-text('{with_boxes[0]['trace_id']}')")
    page.wait_for_function("() => document.querySelector('#trace-image')?.naturalWidth > 0")
    assert page.locator(".image-box rect.cloud").count() == len(drawn)  # the faint ones are left off...
    page.fill("#box-floor", "0")
    assert page.locator(".image-box rect.cloud").count() == len(with_boxes[0]["result"]["final"]["boxes"])  # ...or not
    page.fill("#box-floor", str(BOX_FLOOR))
    page.wait_for_selector("h2:has-text('Hops') ~ table td")
    screenshot(page, "console-trace", docs=True)

    # The digits the cloud read otherwise than the device are waiting to be labelled.
    page.goto(f"{console.url}/console/#/hard")
    page.wait_for_selector(".label-form")
    waiting = console.call("viewer", "GET", "/console/api/hard-examples?labelled=false").json()
    assert waiting and all(h["edge_label"] != h["cloud_label"] for h in waiting)
    first, second = waiting[0], waiting[1] if len(waiting) > 1 else None
    page.click(f".label-form[data-trace='{first['trace_id']}'] button[data-confirm]")
    page.wait_for_selector(f".label-form[data-trace='{first['trace_id']}']", state="detached")
    if second is not None:
        page.fill(f".label-form[data-trace='{second['trace_id']}'] input[name=label]", "7")
        page.click(f".label-form[data-trace='{second['trace_id']}'] button[type=submit]")
        page.wait_for_selector(f".label-form[data-trace='{second['trace_id']}']", state="detached")
    screenshot(page, "console-hard-examples")
    assert console.call("viewer", "POST", f"/console/api/hard-examples/{first['trace_id']}", json={"label": "1"}) \
        .status_code == 403  # fmt: skip
    exported = console.call("viewer", "GET", "/console/api/hard-examples/export")
    with zipfile.ZipFile(io.BytesIO(exported.content)) as archive:
        names = archive.namelist()
        labels = archive.read("labels.csv").decode()
    stems = {name.rsplit(".", 1)[0] for name in names}
    assert f"images/{first['cloud_label']}/{first['trace_id']}" in stems
    assert first["trace_id"] in labels and (second is None or f"images/7/{second['trace_id']}" in stems)


# -- a thousand devices ---------------------------------------------------------------------------------------------


class SimulatedFleet:
    """``count`` devices as the hub sees them, from one MQTT connection (the hub cannot tell: each message is on the
    device's own topics): each one's report (retained), availability, and a heartbeat every ``every_s`` (once, if
    None)."""

    def __init__(self, port: int, count: int, prefix: str, groups: int = 10, every_s: float | None = None) -> None:
        """Device i is in group sim-{i % groups}."""
        self.ids = [f"{prefix}-{i:04d}" for i in range(count)]
        self._groups, self._every_s = groups, every_s
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-{prefix}")
        self._client.max_queued_messages_set(0)
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def __enter__(self) -> SimulatedFleet:
        now, infos = time.time(), []
        for i, device_id in enumerate(self.ids):
            reported = fleet.Reported(
                device_id=device_id, sent_at=now, group=f"sim-{i % self._groups}",
                device_class="x86_64/cpu", runtime_version="sim",
                model=fleet.ActiveModel(model_id="digits-weak", backend="onnxruntime:CPUExecutionProvider"),
            )  # fmt: skip
            infos.append(self._client.publish(str(DeviceTopic(device_id, Channel.REPORTED)), fleet.encode(reported), 1))
            infos.append(self._client.publish(str(DeviceTopic.availability(device_id)), b"online", 1))
        for info in infos + self._heartbeats():
            info.wait_for_publish(30)
        if self._every_s is not None:
            self._thread.start()
        return self

    def _heartbeats(self) -> list[mqtt.MQTTMessageInfo]:
        now = time.time()
        infos = []
        for i, device_id in enumerate(self.ids):
            beat = fleet.Telemetry(
                device_id=device_id, sent_at=now, interval_s=5.0, fps=10.0, camera_fps={"cam0": 10.0},
                escalations_per_s=0.5, fallbacks_per_s=0.0, outbox_rows=i % 3, outbox_oldest_age_s=0.0,
                confidence_histogram=(0,) * fleet.CONFIDENCE_BINS, cpu_percent=10.0, memory_mb=100.0,
                judge_threshold=0.6,
            )  # fmt: skip
            infos.append(self._client.publish(str(DeviceTopic(device_id, Channel.TELEMETRY)), fleet.encode(beat), 1))
        return infos

    def _beat(self) -> None:
        assert self._every_s is not None
        while not self._stop.wait(self._every_s):
            self._heartbeats()

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        self._client.loop_stop()
        self._client.disconnect()


def test_a_thousand_devices_load(console, pages):
    with SimulatedFleet(console.broker_port, 1000, "sim"):
        wait_for(lambda: len(console.hub.fleet.store.devices()) >= 1000, 120, "the hub to hear of 1,000 devices")
    page = pages(console, "viewer")
    page.wait_for_selector("#fleet-table")
    drawn_ms = []
    for _ in range(3):
        page.reload()
        page.wait_for_function("() => document.querySelectorAll('#fleet-table tbody tr').length >= 1000")
        drawn_ms.append(page.evaluate("window.tandemFleetDrawnMs"))  # from navigation start, as the browser saw it
    screenshot(page, "console-fleet-1000")
    print(f"\nconsole: the Fleet page with {len(console.hub.fleet.store.devices())} devices drawn "
          f"{', '.join(f'{ms / 1000:.2f}' for ms in drawn_ms)} s after navigation began")  # fmt: skip
    page.fill("#fleet-text", "sim-0999")
    page.wait_for_function("() => document.querySelectorAll('#fleet-table tbody tr').length === 1")
    page.fill("#fleet-text", "")
    page.click("#fleet-table th[data-key='outbox_rows']")
    page.click("#fleet-table th[data-key='outbox_rows']")  # again: the deepest outboxes first
    with httpx.Client(base_url=console.url, timeout=30) as client:
        rows = client.get("/console/api/fleet", headers={"Authorization": f"Bearer {TOKENS['viewer']}"}).json()["rows"]
    deepest = max(r["outbox_rows"] or 0 for r in rows)
    assert page.inner_text("#fleet-table tbody tr:first-child td:nth-child(10)").startswith(f"{deepest}")
