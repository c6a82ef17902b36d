"""The scenario that once lost 119 of 185 MQTT escalations: Mosquitto SIGKILLed three times while the device
escalates, and the hub SIGKILLed and down for about 20 s across one of the broker's deaths. Nothing may be lost."""

from __future__ import annotations

import threading

from edge.app import EdgeRuntime
from tests.integration.faults.conftest import Chaos, drained, fault_device
from tests.support.ledger import hub_runs
from tests.support.report import report


def test_mqtt_escalations_survive_broker_crashes_and_a_hub_outage(tmp_path, demo_assets, fault_hub, mosquitto):
    fault_hub.start()
    device_id = "cam-outage"
    config = fault_device(
        tmp_path, demo_assets, fault_hub, device_id=device_id, mqtt_port=mosquitto.port, transport="mqtt", fps=10.0
    )

    def crash_broker() -> None:
        mosquitto.kill()
        threading.Event().wait(1.0)
        mosquitto.restart()

    hub_back = threading.Thread(target=fault_hub.start, name="hub-restart")
    chaos = Chaos(
        [
            (2.0, "mosquitto SIGKILL + restart", crash_broker),
            (5.0, "hub SIGKILL", fault_hub.kill),
            (9.0, "mosquitto SIGKILL + restart (hub down)", crash_broker),
            (12.0, "hub restart begins", hub_back.start),
            (15.0, "mosquitto SIGKILL + restart (hub starting)", crash_broker),
        ]
    )
    with EdgeRuntime(config) as runtime:
        chaos.start()
        frames = runtime.run(max_frames=200)
        chaos.join()
        hub_back.join(240)
        assert fault_hub.running, "the hub did not come back"
        books = drained(config.state_path, 120)

    runs = hub_runs(fault_hub.store, device_id)
    figures = {
        "frames": frames,
        **books.figures(),
        "hub traces": len(runs),
        "model reruns after the hub's kill": sum(r > 1 for r in runs.values()),
    }
    report("MQTT outage (3 broker kills, hub down ~20 s)", "; ".join(chaos.done), figures)
    assert books.integrity == "ok"
    assert books.escalated == frames == 200
    assert books.lost == [] and books.applied_twice == [] and books.dropped == 0
    assert books.verdicts + books.late_verdicts == books.escalated  # every one answered by the hub, once
    assert len(runs) == books.escalated  # the hub has every one of them
    # One model run per trace; a second only for a run the hub's SIGKILL cut short.
    assert max(runs.values()) <= 2
