"""The hub's settings by scope: a narrower scope wins, field by field, and a device's tags apply in name order."""

from cloud.fleet.service import merged
from cloud.fleet.store import Device, Scope, Session, SettingsLayer


def layer(scope, name, **sections):
    return SettingsLayer(Scope(scope), name, sections, 0.0, "ana")


def test_narrower_scopes_win_field_by_field():
    device = Device("cam-7", 0.0, 0.0, Session.INIT, 0.0, group="lobby", tags=("night", "north"))
    layers = [
        layer("device", "cam-7", judge={"min_margin": 0.3}),
        layer("all", "", judge={"confidence_threshold": 0.5, "audit_rate": 0.01}, escalation={"deadline_ms": 9000}),
        layer("group", "lobby", judge={"confidence_threshold": 0.6}),
        layer("tag", "north", judge={"confidence_threshold": 0.8}),
        layer("tag", "night", judge={"confidence_threshold": 0.7, "audit_rate": 0.02}),
        layer("group", "dock", judge={"confidence_threshold": 0.1}),  # another group: not this device's
        layer("device", "cam-8", judge={"min_margin": 0.9}),
    ]
    assert merged(layers, device) == {
        "judge": {"confidence_threshold": 0.8, "audit_rate": 0.02, "min_margin": 0.3},
        "escalation": {"deadline_ms": 9000},
    }


def test_a_device_no_scope_covers_gets_nothing():
    device = Device("cam-9", 0.0, 0.0, Session.INIT, 0.0, group="yard")
    assert merged([layer("group", "lobby", judge={"confidence_threshold": 0.6})], device) == {}
