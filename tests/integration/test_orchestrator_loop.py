"""The orchestrator's closed loop on a real hub: a ``Hub`` (without Ray) with its HTTP API on a real server, a real
Mosquitto, and two real ``tandem edge run`` processes escalating over MQTT.

    the strong model is given less capacity than the devices' escalations need: the rules move the group's judge
    threshold down, one bounded step at a time; the devices apply it without a restart; the escalation rate falls
    within the strong model's capacity. When one device stops (the load goes), the threshold moves back up.
    Every step is within the bounds, in the proposals, and in an audit chain that verifies.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import yaml

from cloud.config import FleetConfig, HubConfig
from cloud.hub import Hub, LocalPool
from cloud.orchestrator.config import OrchestratorConfig
from tandem.broker import free_port
from tandem.cli import main
from tests.integration.conftest import fleet_device_config
from tests.support.fleet import TOKEN, Api, EdgeProcess, HttpThread, HubThread, devices, operator
from tests.support.report import report
from tests.support.waiting import wait_for

GROUP = "orch-cams"
DEVICES = ("cam-o1", "cam-o2")
CAPACITY_PER_S = 1.2  # the strong model's capacity as the orchestrator is told it: well below the devices' load
BASELINE = 0.99  # the devices' own threshold: about a fifth of the demo frames escalate
STEP, FLOOR = 0.1, 0.5


@pytest.fixture
def orchestrated(tmp_path, demo_assets, mosquitto, hub) -> Iterator[tuple[Hub, Api, HubThread]]:
    hub.stop()  # the session's Ray hub would answer the same escalations
    routing = tmp_path / "routing.yaml"
    routing.write_text(
        yaml.safe_dump(
            {
                "models": {
                    "strong": {"path": str(demo_assets / "models" / "digits-strong.onnx"), "cost_per_1k": 1.0},
                    "weak": {"path": str(demo_assets / "models" / "digits-weak.onnx"), "cost_per_1k": 0.1},
                },
                "routes": [{"name": "default", "steps": [{"model": "strong"}]}],
                "balancing": {"window_s": 4.0},  # rates measured over 4 s, so the loop sees a change quickly
            }
        )
    )
    port = free_port()
    config = HubConfig(
        routing_path=routing,
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-orchestrator",
        http_port=port,
        trace_store_path=tmp_path / "hub" / "hub.db",
        fleet=FleetConfig(check_every_s=0.5, operators={"ops": operator(TOKEN)}),
        orchestrator=OrchestratorConfig.model_validate(
            {
                "mode": "auto",
                "every_s": 1.0,
                "cooldown_s": 5.0,
                "watch": [{"model": "strong", "capacity_per_s": CAPACITY_PER_S}],
                "bounds": {"threshold_min": FLOOR, "threshold_step": STEP, "max_fleet_share": 1.0},
                "llm": {"enabled": False},
            }
        ),
    )
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner as hub_object, HttpThread(hub_object.http_app(), port):
        api = Api(port)
        yield hub_object, api, runner
        api.client.close()


@pytest.fixture
def edges(tmp_path, demo_assets, mosquitto) -> Iterator[dict[str, EdgeProcess]]:
    folder = tmp_path / "devices"
    folder.mkdir()
    made = {}
    for device_id in DEVICES:
        config = fleet_device_config(folder, demo_assets, mosquitto.port, device_id, group=GROUP, root_key="")
        judge = config.judge.model_copy(update={"confidence_threshold": BASELINE})
        config = config.model_copy(
            update={"judge": judge, "models": config.models.model_copy(update={"root_keys": []})}
        )
        made[device_id] = EdgeProcess(folder, config)
        made[device_id].start()
    yield made
    for edge in made.values():
        edge.stop()


def _thresholds(api) -> dict[str, float]:
    found = devices(api)
    return {d: (found.get(d, {}).get("telemetry") or {}).get("judge_threshold") for d in DEVICES}


def _snapshot(runner: HubThread):
    return runner.call(runner.hub.orchestrator.observer.observe())


def test_overload_moves_the_groups_threshold_down_within_bounds_and_back_up_when_the_load_goes(
    orchestrated, edges, monkeypatch, capsys
):
    hub, api, runner = orchestrated
    wait_for(lambda: set(_thresholds(api).values()) == {BASELINE}, 60, "both devices' first heartbeats")
    start = _snapshot(runner)
    wait_for(lambda: _snapshot(runner).models["strong"].calls_per_s > CAPACITY_PER_S, 30, "the overload")
    overloaded = _snapshot(runner).models["strong"].calls_per_s

    # The rules lower the threshold step by step until the strong model is within its capacity.
    def within_capacity() -> bool:
        snap = _snapshot(runner)
        return snap.models["strong"].calls_per_s <= CAPACITY_PER_S and snap.groups[GROUP].judge_threshold < BASELINE

    wait_for(within_capacity, 90, "the escalation rate within the strong model's capacity", poll_s=0.5)
    lowered = _thresholds(api)
    assert all(t is not None and FLOOR <= t < BASELINE for t in lowered.values())  # the devices applied it
    settled = _snapshot(runner).models["strong"].calls_per_s

    # The load goes: one of the two devices stops. The threshold moves back up.
    edges[DEVICES[1]].stop()
    lowest = min(lowered.values())
    wait_for(lambda: (_thresholds(api)[DEVICES[0]] or 0) > lowest, 90, "the threshold to move back up", poll_s=0.5)

    rows = [r for r in hub.orchestrator.store.proposals() if r.action.get("tool") == "set_judge_threshold"]
    applied = sorted((r for r in rows if r.state.value == "APPLIED"), key=lambda r: r.created_at)
    assert applied and all(r.source == "rules" for r in applied)
    values = [BASELINE] + [r.action["confidence_threshold"] for r in applied]
    assert all(abs(b - a) <= STEP + 1e-9 for a, b in itertools.pairwise(values))  # one bounded step at a time
    assert all(FLOOR - 1e-9 <= v <= BASELINE + 1e-9 for v in values)  # never below the floor or above baseline
    assert hub.orchestrator.store.verify() is None

    # The operator's view: the same proposals and a verified chain, through the CLI.
    monkeypatch.setenv("TANDEM_HUB_TOKEN", TOKEN)
    url = f"http://127.0.0.1:{api.client.base_url.port}"
    capsys.readouterr()
    assert main(["hub", "proposals", "--url", url, "list", "--state", "APPLIED"]) == 0
    listed = capsys.readouterr().out
    assert "set_judge_threshold" in listed and "rules" in listed
    assert main(["hub", "orchestrator", "--url", url, "audit", "--verify"]) == 0
    assert "chain: intact" in capsys.readouterr().out
    report(
        "orchestrator_closed_loop",
        f"a strong model told its capacity is {CAPACITY_PER_S} calls/s, two devices escalating above it",
        {
            "calls/s at start": round(start.models["strong"].calls_per_s, 2),
            "overloaded": round(overloaded, 2),
            "settled": round(settled, 2),
            "thresholds applied": values,
        },
    )
