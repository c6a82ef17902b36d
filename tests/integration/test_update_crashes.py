"""kill -9 at each step of a model update: after a restart the device has exactly one complete active model,
says where it was interrupted, and finishes the update the hub still wants.

A failpoint (``edge.models.failpoints``) holds the device at the step; the test waits until slots.json says the
device is there, kills it with SIGKILL, checks what is on disk, and starts it again without the failpoint.
"""

from __future__ import annotations

import time

import pytest

from edge.config import fleet_state_dir
from edge.models.failpoints import STEPS
from edge.models.slots import Slots
from tests.integration.conftest import fleet_device_config
from tests.support.bundles import tempered
from tests.support.fleet import EdgeProcess, bundle, devices, finished
from tests.support.report import report
from tests.support.waiting import wait_for

RESULTS: dict[str, str] = {}


@pytest.mark.parametrize("step", STEPS)
def test_kill_9_at_each_update_step_leaves_one_complete_model(step, tmp_path, demo_assets, mosquitto, rollout_hub):
    hub_object, api = rollout_hub
    device_id = f"cam-kill-{step}"
    root_key = hub_object.keys().root_public
    config = fleet_device_config(
        tmp_path,
        demo_assets,
        mosquitto.port,
        device_id,
        group=f"kill-{step}",
        root_key=root_key,
        fps=30.0,
        probation_frames=30,
    )
    edge = EdgeProcess(tmp_path, config)
    slots = Slots(fleet_state_dir(config))
    edge.start(env={"TANDEM_FAILPOINTS": f"{step}=120"})
    try:
        wait_for(lambda: device_id in devices(api) and devices(api)[device_id]["telemetry"], 60, "the device")
        good = tempered(demo_assets / "models" / "digits-weak.onnx", 1.5, tmp_path / "digits-sure.onnx")
        bundle_id = bundle(api, demo_assets, good, good, "digits")
        rollout = api.send(
            "POST",
            "/v1/admin/rollouts",
            {"bundle_id": bundle_id, "target": {"devices": [device_id]}, "soak_s": 0.0, "device_timeout_s": 600},
        )
        wait_for(lambda: slots.load().step == step, 60, f"the device to reach {step}")
        time.sleep(0.5)  # inside the failpoint's pause
        edge.kill()

        on_disk = slots.load()  # what a power cut leaves: one complete model, the bundle's or the device's own
        assert on_disk.active is None or slots.manifest(on_disk.active) is not None, on_disk
        active_at_kill = on_disk.active or "own model"

        edge.start()  # no failpoint
        status = finished(api, rollout["rollout_id"])
        assert status["state"] == "COMPLETED", status
        wait_for(lambda: devices(api)[device_id]["model"].get("bundle_id") == bundle_id, 30, "the device's report")
        log = edge.log.read_text()
        assert f"a restart interrupted the update at step {step}" in log
        if step == STEPS[-1]:  # a plain restart afterwards: the hub still hears how the last update ended
            edge.stop()
            restarted = time.time()
            edge.start()
            wait_for(lambda: devices(api)[device_id]["update"].get("at", 0) > restarted, 30, "the restarted report")
            assert devices(api)[device_id]["update"]["state"] == "active"
    finally:
        edge.stop()
    after = slots.load()
    assert after.active == bundle_id and slots.manifest(bundle_id) is not None and after.step == ""
    assert sorted(p.name for p in (slots.folder / "bundles").iterdir()) == [bundle_id]
    assert not any((slots.folder / "staging").glob("*"))
    RESULTS[step] = f"killed with {active_at_kill} active, restarted, {bundle_id} active"
    if len(RESULTS) == len(STEPS):
        report("kill -9 during a model update", "SIGKILL at each step", RESULTS)
