"""The hub's HTTP API refuses what is too large (413) before reading it, and speaks the v2 protocol's error body.
A real FastAPI app over a real SQLite trace store and registry; the v2 models are a fake of the real interface."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cloud.api import build_http_app
from cloud.ingress.v2 import V2Service
from cloud.registry import SqliteRegistry
from cloud.traces import TraceStore
from tests.support.v2_models import Doubler


@pytest.fixture
def client(tmp_path):
    traces = TraceStore(tmp_path / "hub.db")
    traces.open()
    registry = SqliteRegistry(tmp_path / "registry.db", tmp_path / "artifacts")
    registry.open()
    app = build_http_app(traces, registry, V2Service(Doubler), max_body_bytes=1024, max_artifact_bytes=4096)
    with TestClient(app) as c:
        yield c
    traces.close()


def infer_body(values: list[float]) -> dict:
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": [len(values)], "data": values}]}


def test_a_body_over_the_limit_is_refused_with_413(client):
    assert client.post("/v2/models/double/infer", json=infer_body([1.0, 2.0])).json()["outputs"][0]["data"] == [2, 4]
    big = client.post("/v2/models/double/infer", json=infer_body([1.0] * 500))
    assert big.status_code == 413 and "larger than the limit of 1024 bytes" in big.json()["error"]


def test_a_chunked_body_is_counted_as_it_arrives(client):
    def chunks():
        for _ in range(10):
            yield b"x" * 200

    response = client.post("/v2/models/double/infer", content=chunks())
    assert response.status_code == 413


def test_model_uploads_have_their_own_larger_limit(client):
    import hashlib

    model = b"m" * 2000  # over max_body_bytes, under max_artifact_bytes
    digest = hashlib.sha256(model).hexdigest()
    assert client.put(f"/v1/artifacts/{digest}", content=model).status_code == 201
    too_big = b"m" * 5000
    refused = client.put(f"/v1/artifacts/{hashlib.sha256(too_big).hexdigest()}", content=too_big)
    assert refused.status_code == 413 and "detail" in refused.json()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "words"),
    [
        ("get", "/v2/models/nope", None, 404, "unknown model 'nope'"),
        ("post", "/v2/models/nope/infer", infer_body([1.0]), 404, "unknown model 'nope'"),
        (
            "post",
            "/v2/models/double/infer",
            {"inputs": [{"name": "z", "datatype": "FP32", "shape": [1], "data": [1]}]},
            400,
            "takes inputs ['x']",
        ),
        ("get", "/v2/models/nope/ready", None, 400, "not ready"),
    ],
)
def test_v2_errors_come_as_the_protocols_error_body(client, method, path, body, status, words):
    response = getattr(client, method)(path, **({"json": body} if body is not None else {}))
    assert response.status_code == status
    assert set(response.json()) == {"error"} and words in response.json()["error"]


def test_a_v2_body_that_is_not_json_is_a_400_error_body(client):
    response = client.post("/v2/models/double/infer", content=b"{not json")
    assert response.status_code == 400 and "does not parse" in response.json()["error"]
    assert client.get("/v2/models/double").json()["name"] == "double"
