"""The deterministic controller: what it does under each fault, and that it does nothing when nothing is wrong."""

from __future__ import annotations

from dataclasses import replace

from cloud.orchestrator import actions as a
from cloud.orchestrator.rules import Rules
from tests.support.orchestrator import config, group, model, replica, snapshot


def decide(snap, memory=None, budget=None, **kw):
    rules = Rules(config(**kw), {} if memory is None else memory)
    return rules, rules.decide(snap, budget)


def tools(proposals):
    return [p.action for p in proposals]


def test_a_healthy_system_gets_no_action():
    for rate in (0.0, 3.0, 6.0, 9.5):  # below, inside and at the top of the band
        assert decide(snapshot(strong_rate=rate))[1] == []


def test_overload_lowers_the_busiest_groups_thresholds_one_step():
    rules, found = decide(snapshot(strong_rate=12.0))
    assert tools(found) == [
        a.SetJudgeThreshold(group="lobby", confidence_threshold=0.85),
        a.SetJudgeThreshold(group="gate", confidence_threshold=0.85),
    ]
    assert "overloaded" in found[0].reason
    assert rules.memory == {}  # nothing remembered until an action is applied


def test_heavy_overload_also_sheds_to_the_cheaper_model():
    found = tools(decide(snapshot(strong_rate=20.0))[1])
    assert found[0] == a.ShedLoad(model="strong", queue_above=10, to_model="weak")  # capacity 10/s x SLO 1 s


def test_an_slo_breach_counts_as_overload_even_at_low_rate():
    snap = snapshot(models={"strong": model("strong", 2.0, p99_ms=3000.0), "weak": model("weak", 1.0)})
    assert any(isinstance(x, a.SetJudgeThreshold) for x in tools(decide(snap)[1]))


def test_a_group_draining_a_backlog_keeps_its_threshold_and_the_overflow_is_shed():
    groups = {"lobby": group("lobby", outbox=500), "gate": group("gate", rate=2.0)}
    found = tools(decide(snapshot(strong_rate=12.0, groups=groups))[1])
    assert a.ShedLoad(model="strong", queue_above=10, to_model="weak") in found
    assert a.SetJudgeThreshold(group="gate", confidence_threshold=0.85) in found
    assert not any(isinstance(x, a.SetJudgeThreshold) and x.group == "lobby" for x in found)


def test_thresholds_stop_at_their_floor():
    groups = {"lobby": group("lobby", threshold=0.3)}
    assert decide(snapshot(strong_rate=12.0, groups=groups))[1] == []


def test_the_fleet_share_limits_how_many_groups_one_round_lowers():
    groups = {g: group(g, devices=3, rate=r) for g, r in (("a", 5.0), ("b", 4.0), ("c", 3.0))}
    found = tools(decide(snapshot(strong_rate=12.0, groups=groups, devices=9))[1])
    assert [x.group for x in found] == ["a"]  # 3 of 9 devices; a second group would make 6 of 9 > 50%


def test_quiet_again_moves_lowered_thresholds_back_step_by_step_and_stops_shedding():
    rules, found = decide(snapshot(strong_rate=12.0))
    snap = snapshot(strong_rate=12.0)
    for proposal in found:
        rules.applied(proposal.action, snap)
    assert rules.memory == {"baseline:lobby": 0.9, "baseline:gate": 0.9}
    lowered = {"lobby": group("lobby", threshold=0.8), "gate": group("gate", threshold=0.9)}
    quiet = snapshot(strong_rate=2.0, groups=lowered, shedding={"strong": 10})
    found = tools(rules.decide(quiet, None))
    assert found == [a.StopShedding(model="strong"), a.SetJudgeThreshold(group="lobby", confidence_threshold=0.85)]
    assert "baseline:gate" not in rules.memory  # back at its baseline: forgotten


def test_no_raise_while_the_budget_is_tight():
    memory = {"baseline:lobby": 0.9}
    snap = snapshot(strong_rate=2.0, groups={"lobby": group("lobby", threshold=0.8)})
    assert decide(snap, memory, budget=snap.cost_per_hour * 1.1)[1] == []  # within 80% of the budget: hold
    assert decide(snap, memory, budget=snap.cost_per_hour * 2)[1] != []


def test_over_budget_lowers_thresholds():
    snap = snapshot(strong_rate=5.0)
    found = tools(decide(snap, budget=snap.cost_per_hour / 2)[1])
    assert a.SetJudgeThreshold(group="lobby", confidence_threshold=0.85) in found


def test_a_failing_replica_is_taken_out_and_put_back_for_a_probe_later():
    replicas = [replica("a", calls=40, errors=20), replica("b", calls=40)]
    snap = snapshot(models={"strong": model("strong", 5.0, replicas=replicas), "weak": model("weak", 1.0)})
    rules, found = decide(snap)
    assert tools(found) == [a.SetCircuit(model="strong", replica="a", state="open")]
    rules.applied(found[0].action, snap)
    held = [replica("a", state="open"), replica("b", calls=40)]
    later = replace(snap, at=snap.at + 61, models={**snap.models, "strong": model("strong", 5.0, replicas=held)})
    assert tools(rules.decide(replace(later, at=snap.at + 30), None)) == []
    assert tools(rules.decide(later, None)) == [a.SetCircuit(model="strong", replica="a", state="closed")]


def test_the_only_replica_is_never_taken_out_and_few_calls_prove_nothing():
    alone = snapshot(models={"strong": model("strong", 5.0, replicas=[replica("a", calls=40, errors=30)])})
    assert decide(alone)[1] == []
    few = [replica("a", calls=4, errors=4), replica("b", calls=40)]
    assert decide(snapshot(models={"strong": model("strong", 5.0, replicas=few)}))[1] == []
