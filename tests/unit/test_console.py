"""The console's parts below the page: the alerts and their webhook, the Fleet page's rows and history, each
abort rule against its bound."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cloud.config import AlertConfig, FleetConfig
from cloud.console.alerts import USUAL_AFTER, AlertWatch
from cloud.console.feed import HISTORY, FleetFeed
from cloud.fleet.rollout_spec import Rules
from cloud.fleet.rollout_store import RolloutRow, RolloutStore
from cloud.fleet.rollouts import RolloutService, rule_checks
from cloud.fleet.service import FleetService
from cloud.fleet.store import Device, FleetStore, Session
from cloud.metrics import HubMetrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Fleet:
    def __init__(self, tmp_path) -> None:
        self.clock = Clock()
        self.store = FleetStore(tmp_path / "fleet.db")
        self.store.open()
        self.rollout_store = RolloutStore(tmp_path / "fleet.db")
        self.rollout_store.open()
        self.metrics = HubMetrics()
        config = FleetConfig(silent_after_s=30)
        self.service = FleetService(self.store, config, lambda *_a: None, self.metrics, clock=self.clock)
        self.rollouts = RolloutService(self.rollout_store, self.service, self.metrics, clock=self.clock)

    def beat(self, device_id: str, escalations_per_s: float = 0.1, **telemetry: object) -> None:
        """A heartbeat from the device, now."""
        now = self.clock.now
        device = self.store.get(device_id) or Device(device_id, now, now, Session.INIT, now, group="g", available=True)
        beat = {"escalations_per_s": escalations_per_s, "fps": 10.0, "fallbacks_per_s": 0.0, **telemetry}
        self.store.put(replace(device, last_seen=now, telemetry=beat, telemetry_at=now))

    def close(self) -> None:
        self.store.close()
        self.rollout_store.close()


@pytest.fixture
def fleet(tmp_path):
    made = Fleet(tmp_path)
    yield made
    made.close()


def watch(fleet: Fleet, post=None, **config: object) -> AlertWatch:
    settings = AlertConfig(silent_after_s=60, webhook_url="http://alerts.example/hook" if post else None, **config)
    return AlertWatch(fleet.store, lambda: fleet.service, lambda: fleet.rollouts, settings, fleet.metrics,
                      fleet.clock, post)  # fmt: skip


def active(fleet: Fleet) -> set[str]:
    return {a.alert_id for a in fleet.store.alerts(active=True)}


def test_a_silent_device_raises_an_alert_once_and_clears_it_when_it_speaks(fleet):
    alerts = watch(fleet)
    fleet.beat("cam-1")
    assert alerts.check() == [] and active(fleet) == set()
    fleet.clock.now += 61
    (raised,) = alerts.check()
    assert raised.alert_id == "silent:cam-1" and "no message for 61 s" in raised.message
    fleet.clock.now += 10
    assert alerts.check() == []  # raised once, not at every check
    fleet.beat("cam-1")
    (cleared,) = alerts.check()
    assert cleared.alert_id == "silent:cam-1" and cleared.cleared_at == fleet.clock.now
    assert active(fleet) == set()
    assert fleet.metrics.alerts.labels(kind="silent")._value.get() == 1


def test_an_escalation_jump_is_judged_against_the_devices_own_usual_rate(fleet):
    alerts = watch(fleet, escalation_jump=3.0, escalation_jump_min_per_s=0.5)
    for _ in range(USUAL_AFTER + 2):  # its usual: 0.4/s
        fleet.clock.now += 5
        fleet.beat("cam-1", 0.4)
        fleet.beat("cam-2", 0.01)
        alerts.check()
    fleet.clock.now += 5
    fleet.beat("cam-1", 1.0)  # 2.5x: not a jump
    fleet.beat("cam-2", 0.05)  # 5x, but under escalation_jump_min_per_s: not a jump either
    assert alerts.check() == []
    fleet.clock.now += 5
    fleet.beat("cam-1", 2.0)  # 5x its usual
    (raised,) = alerts.check()
    assert raised.alert_id == "escalation_jump:cam-1" and "2.00/s" in raised.message
    fleet.clock.now += 5
    fleet.beat("cam-1", 0.4)
    (cleared,) = alerts.check()
    assert cleared.alert_id == "escalation_jump:cam-1" and not cleared.active


def test_an_aborted_rollout_raises_an_alert(fleet):
    alerts = watch(fleet)
    row = RolloutRow("ro-1", {"bundle_id": "b-1"}, "ABORTED", 0, None, 1.0, "ana", 1.0, "failure share 50%")
    fleet.rollout_store.put(row, [])
    (raised,) = alerts.check()
    assert raised.alert_id == "rollout_aborted:ro-1" and "failure share 50%" in raised.message
    fleet.rollout_store.put(replace(row, state="ROLLED_BACK"))
    (cleared,) = alerts.check()
    assert not cleared.active


def test_the_webhook_gets_each_change_and_what_it_refused_is_sent_again(fleet):
    posted: list[tuple[str, dict]] = []
    answers = [503, 204, 204]

    def post(url: str, body: dict) -> int:
        posted.append((url, body))
        return answers.pop(0)

    alerts = watch(fleet, post)
    fleet.beat("cam-1")
    fleet.clock.now += 61
    alerts.check()  # raised; the receiver answers 503
    assert [b["event"] for _, b in posted] == ["raised"] and fleet.store.unnotified_alerts()
    assert fleet.metrics.webhook_errors._value.get() == 1
    fleet.clock.now += 1
    alerts.check()  # sent again, taken
    assert [b["event"] for _, b in posted] == ["raised", "raised"] and not fleet.store.unnotified_alerts()
    fleet.beat("cam-1")
    alerts.check()
    assert [b["event"] for _, b in posted] == ["raised", "raised", "cleared"]
    assert posted[-1][0] == "http://alerts.example/hook" and posted[-1][1]["alert_id"] == "silent:cam-1"


def test_a_webhook_that_cannot_be_reached_loses_nothing(fleet):
    def post(_url: str, _body: dict) -> int:
        raise ConnectionRefusedError("connection refused")

    alerts = watch(fleet, post)
    fleet.beat("cam-1")
    fleet.clock.now += 61
    alerts.check()
    assert [a.alert_id for a in fleet.store.unnotified_alerts()] == ["silent:cam-1"]


def test_the_feed_reads_the_inventory_at_most_once_a_second_and_keeps_each_heartbeat_once(fleet):
    feed = FleetFeed(lambda: fleet.service, fleet.clock)
    fleet.beat("cam-1", 0.2, camera_fps={"gate": 4.0, "yard": 6.0}, outbox_rows=3, outbox_oldest_age_s=12.5)
    (row,) = feed.rows()
    assert (row["device_id"], row["status"], row["escalations_per_s"], row["outbox_rows"]) == (
        "cam-1",
        "online",
        0.2,
        3,
    )
    assert row["camera_fps"] == {"gate": 4.0, "yard": 6.0} and row["escalation_spark"] == [0.2]
    fleet.beat("cam-2")
    assert [r["device_id"] for r in feed.rows()] == ["cam-1"]  # read less than a second ago
    fleet.clock.now += 1
    assert [r["device_id"] for r in feed.rows()] == ["cam-1", "cam-2"]
    assert len(feed.history("cam-1")) == 1  # the same heartbeat, read twice, counts once
    for i in range(HISTORY + 5):
        fleet.clock.now += 1
        fleet.beat("cam-1", float(i))
        feed.rows()
    history = feed.history("cam-1")
    assert len(history) == HISTORY and history[-1]["escalations_per_s"] == HISTORY + 4


def test_each_abort_rule_is_shown_against_its_bound():
    rules = Rules(max_failure_share=0.2, min_devices=2, max_golden_failures=0, max_escalation_increase=0.5)
    early = rule_checks(rules, {"finished": 1, "failure_share": 1.0, "golden_failures": 0})
    assert [(c["rule"], c["value"], c["over"]) for c in early][:2] == [("golden failures", 0, False),
                                                                       ("failure share", None, False)]  # fmt: skip
    values = {
        "finished": 4,
        "failure_share": 0.25,
        "golden_failures": 1,
        "updated": {"escalation_rate": 0.3, "confidence": 0.7, "p95_ms": 5.0},
        "reference": {"escalation_rate": 0.1, "confidence": 0.9, "p95_ms": 2.0},
    }
    checks = {c["rule"]: c for c in rule_checks(rules, values)}
    assert checks["failure share"]["over"] and checks["golden failures"]["over"]
    assert checks["escalation rate"]["bound"] == pytest.approx(0.15) and checks["escalation rate"]["over"]
    assert checks["confidence drop"]["value"] == pytest.approx(0.2) and checks["confidence drop"]["over"]
    assert checks["p95 inference ms"]["bound"] == pytest.approx(4.0) and checks["p95 inference ms"]["over"]
