"""An operator's hold on a rollout, with device runtimes in this process (a real Mosquitto, a Ray-free hub on a
real HTTP server): pause holds the next wave until resume; abort and rollback send devices back to what they ran
before; a device that never finishes times out; a newer rollout takes devices over from a stuck one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from edge.config import ModelsConfig, ProbationConfig
from tests.integration.test_fleet import Device
from tests.support.bundles import tempered
from tests.support.fleet import TOKEN, bundle, devices, finished
from tests.support.waiting import wait_for

IDS = ("cam-c1", "cam-c2", "cam-c3")


@pytest.fixture
def fleet(tmp_path, demo_assets, mosquitto, rollout_hub) -> Iterator[dict[str, Device]]:
    hub_object, api = rollout_hub
    made = {}
    for device_id in IDS:
        device = Device(tmp_path, demo_assets, mosquitto.port, device_id, "control")
        device.config = device.config.model_copy(
            update={
                # This test is about control, not speed: over 15 frames on a loaded 2-core machine one hiccup is
                # the p95, so only a model 50 ms slower would count (the latency rule: test_probation.py).
                "models": ModelsConfig(
                    root_keys=[hub_object.keys().root_public],
                    probation=ProbationConfig(frames=15, min_latency_change_ms=50),
                )
            }
        )
        made[device_id] = device
        device.start()
    wait_for(lambda: all(d in devices(api) for d in IDS), 30, "the devices")
    yield made
    for device in made.values():
        device.close()


def models(api) -> list[str]:
    found = devices(api)
    return [found[d]["model"].get("bundle_id", "") for d in IDS]


def status(api, rollout_id: str) -> dict:
    return api.get(f"/v1/admin/rollouts/{rollout_id}")


def test_pause_resume_abort_and_rollback(tmp_path, demo_assets, rollout_hub, fleet):
    _hub, api = rollout_hub
    weak = demo_assets / "models" / "digits-weak.onnx"
    model = tempered(weak, 1.6, tmp_path / "m" / "digits-b.onnx")
    second = bundle(api, demo_assets, model, model, "control")
    # This test is about the controls, not model quality: a busy 2-core machine can stretch a 0.2 ms model's p95
    # past the default 2 ms latency bound (seen once: 2.30 ms against 0.19 ms), so that rule is widened here.
    rules = {"min_frames": 10, "min_latency_delta_ms": 50}
    spec = {"target": {"group": "control"}, "waves": [0.33, 1.0], "soak_s": 0.5, "rules": rules}

    # Pause after the first wave: the second waits until resume.
    rollout = api.send("POST", "/v1/admin/rollouts", {"bundle_id": second, **spec})
    rid = rollout["rollout_id"]
    api.send("POST", f"/v1/admin/rollouts/{rid}/pause")
    wait_for(lambda: sum(m == second for m in models(api)) == 1, 30, "the first wave")
    assert status(api, rid)["state"] == "PAUSED"
    assert sum(d["state"] == "waiting" for d in status(api, rid)["devices"]) == 2
    api.send("POST", f"/v1/admin/rollouts/{rid}/resume")
    assert finished(api, rid)["state"] == "COMPLETED"
    wait_for(lambda: models(api) == [second] * 3, 30, "every device on the bundle")

    # Rollback of a finished rollout: every device back to what it ran before (its own model).
    api.send("POST", f"/v1/admin/rollouts/{rid}/rollback")
    wait_for(lambda: models(api) == [""] * 3, 30, "every device back on its own model")
    assert status(api, rid)["state"] == "ROLLED_BACK"
    assert all(d["state"] == "reverted" for d in status(api, rid)["devices"])

    # An operator's abort mid-rollout sends the first wave back; the rest never get the bundle.
    rollout = api.send("POST", "/v1/admin/rollouts", {"bundle_id": second, **spec, "soak_s": 60})
    rid = rollout["rollout_id"]
    wait_for(lambda: sum(m == second for m in models(api)) == 1, 30, "the first wave")
    api.send("POST", f"/v1/admin/rollouts/{rid}/abort")
    wait_for(lambda: models(api) == [""] * 3, 30, "the first wave back on its own model")
    aborted = status(api, rid)
    assert aborted["state"] == "ABORTED" and "aborted by an operator (ops)" in aborted["reason"]
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert api.client.post(f"/v1/admin/rollouts/{rid}/abort", headers=headers).status_code == 409  # ended already
    assert api.client.get("/v1/admin/rollouts/ro-none", headers=headers).status_code == 404
    assert api.client.get("/v1/bundles/none-1").status_code == 404
    metrics = api.client.get("/metrics").text
    assert 'tandem_hub_rollouts_total{state="ABORTED"} 1.0' in metrics
    assert 'tandem_hub_rollouts_total{state="ROLLED_BACK"} 1.0' in metrics
    audit = [e["action"] for e in api.get("/v1/admin/audit")]
    assert {"rollout_start", "rollout_paused", "rollout_running", "rollout_rollback", "rollout_abort"} <= set(audit)


def test_a_device_that_never_finishes_times_out_and_a_newer_rollout_takes_over(
    tmp_path, demo_assets, rollout_hub, fleet
):
    _hub, api = rollout_hub
    weak = demo_assets / "models" / "digits-weak.onnx"
    model = tempered(weak, 1.5, tmp_path / "m" / "digits-a.onnx")
    good = bundle(api, demo_assets, model, model, "control")
    fleet["cam-c1"].close()  # gone for good: the rollout must not wait for it
    alone = {"bundle_id": good, "target": {"devices": ["cam-c1"]}, "device_timeout_s": 2, "soak_s": 0}
    stuck = api.send("POST", "/v1/admin/rollouts", alone)
    ended = finished(api, stuck["rollout_id"])
    assert ended["state"] == "ABORTED" and ended["devices"][0]["reason"] == "timeout", ended
    # A rollout held on a device that does not answer does not block the next one for the others.
    pair = {"bundle_id": good, "target": {"devices": ["cam-c1", "cam-c2"]}, "waves": [0.5, 1.0]}
    held = api.send("POST", "/v1/admin/rollouts", {**pair, "device_timeout_s": 600})
    rules = {"max_failure_share": 0.5, "min_devices": 3}
    everyone = {"bundle_id": good, "target": {"group": "control"}, "waves": [1.0], "soak_s": 0, "rules": rules}
    newer = api.send("POST", "/v1/admin/rollouts", {**everyone, "device_timeout_s": 3})
    older = status(api, held["rollout_id"])
    assert {d["state"] for d in older["devices"]} <= {"superseded", "active"}, older
    done = finished(api, newer["rollout_id"])
    assert done["state"] == "COMPLETED", done
    states = {d["device_id"]: d["state"] for d in done["devices"]}
    assert states["cam-c2"] == states["cam-c3"] == "active" and states["cam-c1"] == "timed_out", states
