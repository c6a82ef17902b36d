"""The OpenAI-compatible endpoint client over real HTTP: what it sends (model, the Decision schema as
response_format, the key from the environment variable named in the config), and each way an endpoint can fail
becoming AdvisorUnavailable, so the rules' decisions stand. The server is a small FastAPI app on uvicorn whose
answers the test scripts (tools/bench orchestrator --endpoint runs against a real one)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from cloud.orchestrator.advisor import AdvisorUnavailable, ChatEndpoint
from cloud.orchestrator.config import LlmConfig
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import OrchestratorStore, ProposalState
from tandem.broker import free_port
from tests.support.fleet import HttpThread
from tests.support.orchestrator import Observed, RecordingActuator, config, group, model, snapshot


class Endpoint:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.reply: object = {
            "actions": [{"tool": "shed_load", "model": "strong", "queue_above": 9, "to_model": "weak"}]
        }
        self.status = 200
        self.delay_s = 0.0
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def complete(request: Request):
            self.requests.append(await request.json())
            self.headers.append(dict(request.headers))
            await asyncio.sleep(self.delay_s)
            if self.status != 200:
                return JSONResponse({"error": "overloaded"}, status_code=self.status)
            content = self.reply if isinstance(self.reply, str) else json.dumps(self.reply)
            return {"choices": [{"message": {"role": "assistant", "content": content}}]}


@pytest.fixture
def endpoint() -> Iterator[tuple[Endpoint, str]]:
    served = Endpoint()
    port = free_port()
    with HttpThread(served.app, port):
        yield served, f"http://127.0.0.1:{port}/v1"


def test_the_client_asks_for_the_schema_with_the_key_and_the_loop_uses_the_answer(endpoint, tmp_path, monkeypatch):
    served, url = endpoint
    monkeypatch.setenv("TANDEM_TEST_LLM_KEY", "sk-test")
    llm = {"endpoint": url, "model": "big-model", "api_key_env": "TANDEM_TEST_LLM_KEY", "timeout_s": 5}
    store = OrchestratorStore(tmp_path / "o.db")
    store.open()
    groups = {"lobby": group("lobby", threshold=0.3)}
    observed = Observed(snapshot(strong_rate=12.0, groups=groups, models={"strong": model("strong", 12.0),
                                                                          "weak": model("weak", 1.0)}))  # fmt: skip
    actuator = RecordingActuator(observed)
    orchestrator = Orchestrator(
        config(llm=llm), observed, actuator, store, HubMetrics(), ChatEndpoint(config(llm=llm).llm)
    )

    async def go():
        await orchestrator.start()
        try:
            return await orchestrator.tick()
        finally:
            await orchestrator.close()

    report = asyncio.run(go())
    body = served.requests[0]
    assert body["model"] == "big-model" and body["temperature"] == 0
    assert body["response_format"]["json_schema"]["schema"] == a.decision_schema()
    assert served.headers[0]["authorization"] == "Bearer sk-test"
    assert [r.state for r in report.rows] == [ProposalState.APPLIED]
    assert actuator.applied == [a.ShedLoad(model="strong", queue_above=9, to_model="weak")]
    store.close()


@pytest.mark.parametrize(
    ("status", "reply", "delay_s", "words"),
    [
        (503, None, 0.0, "503"),
        (200, None, 2.0, "ReadTimeout"),
    ],
)
def test_an_endpoint_that_fails_or_is_slow_is_unavailable(endpoint, status, reply, delay_s, words):
    served, url = endpoint
    served.status, served.delay_s = status, delay_s
    advisor = ChatEndpoint(LlmConfig(endpoint=url, timeout_s=0.5))
    advisor.start()
    started = time.monotonic()
    with pytest.raises(AdvisorUnavailable, match=words):
        advisor.complete([{"role": "user", "content": "?"}], a.decision_schema())
    assert time.monotonic() - started < 1.9  # the timeout, not the server, ended the wait
    advisor.close()


def test_a_reply_that_is_not_a_chat_completion_is_unavailable(endpoint):
    served, url = endpoint

    @served.app.post("/v2/chat/completions")
    async def odd():
        return {"unexpected": True}

    advisor = ChatEndpoint(LlmConfig(endpoint=url.replace("/v1", "/v2")))
    advisor.start()
    with pytest.raises(AdvisorUnavailable, match="not a chat completion"):
        advisor.complete([{"role": "user", "content": "?"}], a.decision_schema())
    advisor.close()


def test_a_missing_key_is_said_at_start():
    with pytest.raises(AdvisorUnavailable, match="TANDEM_NO_SUCH_KEY"):
        ChatEndpoint(LlmConfig(endpoint="http://127.0.0.1:9/v1", api_key_env="TANDEM_NO_SUCH_KEY")).start()


def test_the_json_object_form_for_servers_that_refuse_json_schema(endpoint):
    served, url = endpoint
    advisor = ChatEndpoint(LlmConfig(endpoint=url, response_format="json_object"))
    advisor.start()
    advisor.complete([{"role": "user", "content": "?"}], a.decision_schema())
    advisor.close()
    assert served.requests[0]["response_format"] == {"type": "json_object", "schema": a.decision_schema()}
