"""Rollouts end to end: a real Mosquitto, a ``Hub`` (without Ray) with its HTTP API on a real server, and three
real ``tandem edge run`` processes with frames flowing.

    a good model rolls out in two waves; every device switches, and no frame is dropped
    a model that is signed but fails its golden check is refused by the first wave; the rollout aborts before
    the second
    a model that passes its golden check but escalates far more is rolled back by each device's probation
    a group's judge threshold set on the hub is applied by its devices without a restart
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from edge.config import ModelsConfig, ProbationConfig
from tandem.cli import main
from tests.integration.conftest import fleet_device_config
from tests.integration.test_fleet import Device
from tests.support.bundles import tempered
from tests.support.fleet import TOKEN, EdgeProcess, bundle, devices, finished
from tests.support.report import report
from tests.support.waiting import wait_for

DEVICES = ("cam-r1", "cam-r2", "cam-r3")


def ours(api) -> list[dict]:
    """This test's devices (the session's broker holds other tests' retained reports too)."""
    found = devices(api)
    return [found[d] for d in DEVICES if d in found]


@pytest.fixture
def edges(tmp_path, demo_assets, mosquitto, rollout_hub) -> Iterator[dict[str, EdgeProcess]]:
    hub_object, _api = rollout_hub
    folder = tmp_path / "devices"
    folder.mkdir()
    made = {}
    for device_id in DEVICES:
        config = fleet_device_config(
            folder,
            demo_assets,
            mosquitto.port,
            device_id,
            group="rollout-lobby",
            root_key=hub_object.keys().root_public,
        )
        made[device_id] = EdgeProcess(folder, config)
    for edge in made.values():
        edge.start()
    yield made
    for edge in made.values():
        edge.stop()


def test_rollouts_switch_refuse_and_roll_back_on_real_devices(tmp_path, demo_assets, rollout_hub, edges):
    _hub, api = rollout_hub
    weak = demo_assets / "models" / "digits-weak.onnx"
    wait_for(lambda: [d["status"] for d in ours(api)] == ["online"] * 3, 60, "three devices")
    wait_for(lambda: all(d["telemetry"] for d in ours(api)), 30, "heartbeats")

    # A group's threshold, set on the hub, applied by running devices.
    lobby = {"name": "rollout-lobby", "settings": {"judge": {"confidence_threshold": 0.55}}}
    api.send("PUT", "/v1/admin/settings/group", lobby)
    wait_for(
        lambda: all(d["in_sync"] and d["reported"]["applied_version"] >= 1 for d in ours(api)),
        30,
        "the lobby's threshold applied",
    )
    assert all(d["reported"]["settings"]["judge"]["confidence_threshold"] == 0.55 for d in ours(api))

    # 1. A good model (the same answers, surer of them), in two waves.
    models = tmp_path / "models"
    good = tempered(weak, 1.5, models / "digits-sure.onnx")
    good_id = bundle(api, demo_assets, good, good, "digits")
    started = time.monotonic()
    two_waves = {"target": {"group": "rollout-lobby"}, "waves": [0.33, 1.0], "soak_s": 1.0, "rules": {"min_frames": 40}}
    rollout = api.send("POST", "/v1/admin/rollouts", {"bundle_id": good_id, **two_waves})
    status = finished(api, rollout["rollout_id"])
    took_s = time.monotonic() - started
    assert status["state"] == "COMPLETED", status
    assert status["waves"] == 2 and [d["state"] for d in status["devices"]] == ["active"] * 3
    wait_for(lambda: all(d["model"].get("bundle_id") == good_id for d in ours(api)), 30, "reports")
    good_timeline = [f"{e['t_s']:6.2f}s {e['event']}" for e in status["timeline"]]

    # 2. Signed, but its golden samples are another model's answers: refused in wave 1, no wave 2.
    liar = tempered(weak, 1.2, models / "digits-liar.onnx")
    liar_id = bundle(api, demo_assets, liar, demo_assets / "models" / "digits-strong.onnx", "digits")
    rollout = api.send("POST", "/v1/admin/rollouts", {"bundle_id": liar_id, **two_waves})
    status = finished(api, rollout["rollout_id"])
    assert status["state"] == "ABORTED" and "golden" in status["reason"], status
    by_wave = {d["device_id"]: d for d in status["devices"]}
    first = [d for d in by_wave.values() if d["wave"] == 0]
    assert len(first) == 1 and first[0]["reason"] == "golden_mismatch", first
    assert all(d["state"] == "waiting" for d in by_wave.values() if d["wave"] == 1)  # the second wave never went
    assert all(d["model"]["bundle_id"] == good_id for d in ours(api))  # untouched
    liar_timeline = [f"{e['t_s']:6.2f}s {e['event']}" for e in status["timeline"]]

    # 3. Passes its golden check, but is far less sure: each device's probation rolls it back.
    unsure = tempered(weak, 0.15, models / "digits-unsure.onnx")
    unsure_id = bundle(api, demo_assets, unsure, unsure, "digits")
    rollout = api.send(
        "POST",
        "/v1/admin/rollouts",
        {
            "bundle_id": unsure_id,
            "target": {"group": "rollout-lobby"},
            "waves": [1.0],
            "soak_s": 1.0,
            "rules": {"max_failure_share": 0.5, "min_devices": 3},
        },
    )
    status = finished(api, rollout["rollout_id"])
    assert status["state"] == "ABORTED", status
    rolled = status["devices"]
    assert all(d["state"] == "reverted" and d["reason"] == "probation_failed" for d in rolled), rolled
    assert all(d["detail"].startswith("escalation rate") for d in rolled), rolled  # what each device measured
    wait_for(lambda: all(d["model"].get("bundle_id") == good_id for d in ours(api)), 30, "back on good")
    unsure_timeline = [f"{e['t_s']:6.2f}s {e['event']}" for e in status["timeline"]]

    for edge in edges.values():
        edge.stop()
    for device_id, edge in edges.items():
        seen = edge.models_per_frame()
        indexes = [i for i, _ in seen]
        assert indexes == list(range(len(indexes))), f"{device_id}: a frame is missing"
        used = [m for _, m in seen]
        assert "digits-sure" in used and "digits-liar" not in used, f"{device_id}: {sorted(set(used))}"
        assert "-" not in used  # every frame was inferred: none lost in a swap
    report(
        "Rollouts on three real devices",
        f"a good model to all three in {took_s:.1f} s (two waves, 1 s soak)",
        {
            "good rollout": " | ".join(good_timeline),
            "golden mismatch": " | ".join(liar_timeline),
            "probation": " | ".join(unsure_timeline),
            "probation reasons": " | ".join(d["detail"] for d in rolled),
        },
    )


def test_the_fleet_from_the_command_line(tmp_path, demo_assets, mosquitto, rollout_hub, capsys, monkeypatch):
    """An operator's session: list devices, set a group's threshold, sign a bundle, roll it out and watch it."""
    _hub, api = rollout_hub
    url = str(api.client.base_url)
    monkeypatch.setenv("TANDEM_HUB_TOKEN", TOKEN)
    device = Device(tmp_path, demo_assets, mosquitto.port, "cam-cli", "yard")
    device.config = device.config.model_copy(
        update={"models": ModelsConfig(root_keys=[_hub.keys().root_public], probation=ProbationConfig(frames=20))}
    )
    device.start()
    try:
        wait_for(lambda: "cam-cli" in devices(api), 30, "the device")

        def tandem(*argv: str) -> str:
            capsys.readouterr()
            code = main(list(argv))
            out = capsys.readouterr().out
            assert code == 0, out
            return out

        assert "cam-cli" in tandem("hub", "devices", "--url", url, "list", "--group", "yard")
        assert "1 devices get a new desired version" in tandem(
            "hub", "settings", "--url", url, "set", "group", "yard", "judge.confidence_threshold=0.7"
        )
        wait_for(lambda: devices(api)["cam-cli"]["in_sync"], 30, "the setting applied")
        good = tempered(demo_assets / "models" / "digits-weak.onnx", 1.5, tmp_path / "digits-sure.onnx")
        made = tandem(
            "hub",
            "bundles",
            "--url",
            url,
            "create",
            "--name",
            "yard",
            "--version",
            "2",
            "--model",
            str(good),
            "--golden-images",
            str(demo_assets / "stream" / "images"),
        )
        assert made.startswith("yard-1: release 1")
        watched = tandem(
            "hub",
            "rollout",
            "--url",
            url,
            "start",
            "yard-1",
            "--group",
            "yard",
            "--waves",
            "1",
            "--soak",
            "0",
            "--watch",
        )
        assert "COMPLETED" in watched and "[########################] 1 active" in watched
        assert "settings" in tandem("hub", "audit", "--url", url)
    finally:
        device.close()
