"""The orchestrator's loop with a scripted language model behind the real interface, over a real SQLite store:
modes, approvals, reverts, the decision cache, a model that is down or talks nonsense, and the audit chain."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from cloud.errors import OrchestratorError
from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import OrchestratorStore, ProposalState
from tests.support.orchestrator import Observed, RecordingActuator, ScriptedAdvisor, config, group, model, snapshot


@pytest.fixture
def store(tmp_path):
    found = OrchestratorStore(tmp_path / "orchestrator.db")
    found.open()
    yield found
    found.close()


def build(store, snap, advisor=None, fail=(), **kw):
    observed = Observed(snap)
    actuator = RecordingActuator(observed, fail=fail)
    metrics = HubMetrics()
    orchestrator = Orchestrator(
        config(**kw), observed, actuator, store, metrics, advisor, clock=lambda: observed.snap.at
    )
    asyncio.run(orchestrator.start())
    return orchestrator, observed, actuator, metrics


def tick(orchestrator):
    return asyncio.run(orchestrator.tick())


def stuck():
    """Overloaded with every threshold at its floor: a case the rules cannot fix, so the model is asked."""
    groups = {"lobby": group("lobby", threshold=0.3), "gate": group("gate", threshold=0.3)}
    return snapshot(strong_rate=12.0, groups=groups, models={"strong": model("strong", 12.0), "weak": model("weak", 1)})


def test_auto_applies_the_rules_and_records_each_step(store):
    orchestrator, observed, _, _ = build(store, snapshot(strong_rate=12.0))
    report = tick(orchestrator)
    assert [r.state for r in report.rows] == [ProposalState.APPLIED, ProposalState.APPLIED]
    assert observed.snap.groups["lobby"].judge_threshold == 0.85
    assert {e["kind"] for e in store.entries()} == {"tick", "proposal", "decision"}
    assert store.verify() is None


def test_observe_records_but_never_applies(store):
    orchestrator, observed, actuator, _ = build(store, snapshot(strong_rate=12.0), mode="observe")
    report = tick(orchestrator)
    assert {r.state for r in report.rows} == {ProposalState.OBSERVED}
    assert actuator.applied == []
    assert observed.snap.groups["lobby"].judge_threshold == 0.9


def test_approve_waits_once_per_target_then_applies_what_an_operator_approves(store):
    orchestrator, observed, actuator, _ = build(store, snapshot(strong_rate=12.0), mode="approve")
    first = tick(orchestrator).rows
    assert {r.state for r in first} == {ProposalState.PROPOSED}
    assert tick(orchestrator).rows == []  # the same proposals are not asked for twice
    lobby = next(r for r in first if r.action["group"] == "lobby")
    gate = next(r for r in first if r.action["group"] == "gate")
    approved = asyncio.run(orchestrator.approve(lobby.proposal_id, "alice"))
    assert approved.state is ProposalState.APPLIED and approved.decided_by == "alice"
    assert observed.snap.groups["lobby"].judge_threshold == 0.85
    rejected = asyncio.run(orchestrator.reject(gate.proposal_id, "bob"))
    assert rejected.state is ProposalState.REJECTED
    with pytest.raises(OrchestratorError, match="only a waiting one"):
        asyncio.run(orchestrator.approve(gate.proposal_id, "alice"))
    assert actuator.applied == [a.SetJudgeThreshold(group="lobby", confidence_threshold=0.85)]


def test_approval_checks_the_bounds_again(store):
    """Proposed at 0.9 -> 0.85; by approval time an operator moved the group to 0.7: 0.85 is now too big a step."""
    orchestrator, observed, _, _ = build(store, snapshot(strong_rate=12.0), mode="approve")
    lobby = next(r for r in tick(orchestrator).rows if r.action["group"] == "lobby")
    observed.snap = snapshot(strong_rate=12.0, groups={"lobby": group("lobby", threshold=0.7)})
    row = asyncio.run(orchestrator.approve(lobby.proposal_id, "alice"))
    assert row.state is ProposalState.BLOCKED and "at approval" in row.detail


def test_revert_puts_back_what_was_there(store):
    orchestrator, _, actuator, _ = build(store, snapshot(strong_rate=12.0))
    row = tick(orchestrator).rows[0]
    reverted = asyncio.run(orchestrator.revert(row.proposal_id, "alice"))
    assert reverted.state is ProposalState.REVERTED
    assert actuator.restored == [("lobby", {"judge": {"confidence_threshold": 0.9}})]
    with pytest.raises(OrchestratorError, match="only an applied one"):
        asyncio.run(orchestrator.revert(row.proposal_id, "alice"))
    assert [e["kind"] for e in store.entries()][-1] == "revert"


def test_an_action_the_hub_cannot_carry_out_is_failed_and_the_loop_goes_on(store):
    orchestrator, _, _, _ = build(store, snapshot(strong_rate=12.0), fail=("set_judge_threshold",))
    report = tick(orchestrator)
    assert {r.state for r in report.rows} == {ProposalState.FAILED}
    assert "cannot be done" in report.rows[0].detail
    tick(orchestrator)  # and again: no exception escapes


def test_the_language_model_is_not_asked_when_nothing_is_wrong(store):
    advisor = ScriptedAdvisor({"actions": [{"tool": "annotate", "text": "hello"}]})
    orchestrator, _, _, _ = build(store, snapshot(strong_rate=5.0), advisor)
    for _ in range(5):
        assert tick(orchestrator).rows == []
    assert advisor.calls == []


def test_the_language_model_is_asked_for_what_the_rules_cannot_fix_and_its_answer_cached(store):
    answer = {"actions": [{"tool": "shed_load", "model": "strong", "queue_above": 8, "to_model": "weak"}]}
    advisor = ScriptedAdvisor(answer)
    orchestrator, _, actuator, metrics = build(store, stuck(), advisor)
    report = tick(orchestrator)
    assert report.llm == "answered" and "every rule at its bound" in report.anomalies[0]
    assert [r.state for r in report.rows] == [ProposalState.APPLIED]
    assert actuator.applied == [a.ShedLoad(model="strong", queue_above=8, to_model="weak")]
    assert "Snapshot:" in advisor.calls[0][1]["content"]
    tick(orchestrator)  # the same situation: answered from the cache
    assert len(advisor.calls) == 1
    assert orchestrator.cache.hits == 1
    assert metrics.orchestrator_cache_hit_rate._value.get() == 0.5
    tick_entry = next(e for e in store.entries() if e["kind"] == "tick")["entry"]
    assert tick_entry["raw"] and len(tick_entry["prompt_sha256"]) == 64 and tick_entry["validation"] == "ok"


def test_a_malformed_answer_is_recorded_and_stopped(store):
    orchestrator, _, actuator, metrics = build(store, stuck(), ScriptedAdvisor('{"actions": [{"tool": "nuke"'))
    report = tick(orchestrator)
    assert report.llm == "malformed"
    assert [r.state for r in report.rows] == [ProposalState.BLOCKED]
    assert "malformed" in report.rows[0].reason
    assert actuator.applied == []
    assert metrics.orchestrator_llm.labels(outcome="malformed")._value.get() == 1


def test_a_model_that_is_down_leaves_the_rules_in_charge(store):
    orchestrator, _, _, _ = build(store, snapshot(strong_rate=12.0), ScriptedAdvisor(fail=True))
    report = tick(orchestrator)  # the rules act; nothing is asked (nothing they could not fix)
    assert {r.state for r in report.rows} == {ProposalState.APPLIED}
    orchestrator2, _, _, _ = build(store, stuck(), ScriptedAdvisor(fail=True))
    assert tick(orchestrator2).llm == "unavailable"


def test_a_slow_model_does_not_hold_the_round(store):
    class Slow(ScriptedAdvisor):
        def complete(self, messages, schema):
            import time

            time.sleep(2.0)
            return super().complete(messages, schema)

    orchestrator, _, _, _ = build(store, stuck(), Slow({"actions": []}), llm={"enabled": False, "timeout_s": 0.2})

    async def twice():
        return (await orchestrator.tick()).llm, (await orchestrator.tick()).llm

    # The second round comes while the first call's thread still runs: the model is not asked again meanwhile.
    assert asyncio.run(twice()) == ("unavailable", "busy")


def test_an_intent_becomes_proposals_that_wait_even_in_auto(store):
    advisor = ScriptedAdvisor({"actions": [{"tool": "set_cost_budget", "per_hour": 5.0}], "explanation": "cap cost"})
    orchestrator, _, _, _ = build(store, snapshot(), advisor)
    rows = asyncio.run(orchestrator.intent("keep cloud cost under 5 per hour", "alice"))
    assert [r.state for r in rows] == [ProposalState.PROPOSED]
    assert rows[0].source == "intent:alice"
    assert "keep cloud cost under 5 per hour" in advisor.calls[0][1]["content"]
    assert orchestrator.budget is None
    asyncio.run(orchestrator.approve(rows[0].proposal_id, "bob"))
    assert orchestrator.budget == 5.0
    asyncio.run(orchestrator.revert(rows[0].proposal_id, "bob"))
    assert orchestrator.budget is None


def test_an_intent_without_a_language_model_says_so(store):
    orchestrator, _, _, _ = build(store, snapshot())
    with pytest.raises(OrchestratorError, match="language model"):
        asyncio.run(orchestrator.intent("prefer accuracy", "alice"))


def test_the_effect_of_an_applied_action_is_measured_later(store):
    orchestrator, observed, _, _ = build(store, snapshot(strong_rate=12.0))
    row = tick(orchestrator).rows[0]
    observed.snap = snapshot(at=1011.0, strong_rate=8.0, groups=observed.snap.groups)
    tick(orchestrator)
    effect = store.get(row.proposal_id).effect
    assert effect["after"]["strong"]["calls_per_s"] == 8.0
    assert store.get(row.proposal_id).before["strong"]["calls_per_s"] == 12.0


def test_proposals_nobody_decides_expire(store):
    orchestrator, observed, _, _ = build(store, snapshot(strong_rate=12.0), mode="approve", proposal_ttl_s=60)
    tick(orchestrator)
    observed.snap = snapshot(at=1100.0, strong_rate=5.0)
    tick(orchestrator)
    assert {r.state for r in store.proposals()} == {ProposalState.EXPIRED}


def test_the_rules_memory_survives_a_restart(store):
    orchestrator, _, _, _ = build(store, snapshot(strong_rate=12.0))
    tick(orchestrator)
    again, _, _, _ = build(store, snapshot(strong_rate=2.0, groups={"lobby": group("lobby", threshold=0.85)}))
    assert [r.action for r in tick(again).rows] == [
        {"tool": "set_judge_threshold", "group": "lobby", "confidence_threshold": 0.9}
    ]


def test_an_edited_or_deleted_audit_entry_breaks_the_chain(store, tmp_path):
    orchestrator, _, _, _ = build(store, snapshot(strong_rate=12.0))
    tick(orchestrator)
    assert store.verify() is None
    with sqlite3.connect(tmp_path / "orchestrator.db") as db:
        db.execute("UPDATE audit SET entry = replace(entry, '0.85', '0.05') WHERE kind = 'proposal'")
    assert "changed" in store.verify()
    with sqlite3.connect(tmp_path / "orchestrator.db") as db:
        db.execute("DELETE FROM audit WHERE seq = 1")
    assert "missing" in store.verify() or "follow" in store.verify()
