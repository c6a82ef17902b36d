"""The model registry's store, without Ray: versions, content-addressed artifacts, queries, status rules."""

import hashlib

import pytest

from cloud.errors import RoutingError
from cloud.registry import (
    IllegalStatusChange,
    ModelExists,
    ModelNotFound,
    ModelSpec,
    ModelStatus,
    ModelUpdate,
    RegistryError,
    SqliteRegistry,
)
from cloud.routing import RoutingConfig, parse_routing, serving
from cloud.routing.balance import CircuitState
from cloud.routing.config import resolve_registry


@pytest.fixture
def registry(tmp_path):
    r = SqliteRegistry(tmp_path / "registry.db", tmp_path / "artifacts")
    r.open()
    yield r
    r.close()


def spec(name="digits-strong", version="1", **kw) -> ModelSpec:
    return ModelSpec(name=name, version=version, task=kw.pop("task", "classification"), **kw)


def test_register_stores_the_artifact_once_by_its_hash(registry, tmp_path):
    blob = b"onnx bytes"
    digest = registry.put_artifact(blob)
    assert digest == hashlib.sha256(blob).hexdigest() and registry.put_artifact(blob) == digest
    a = registry.register(spec(version="1"), digest)
    registry.register(spec(version="2"), digest)
    assert a.status is ModelStatus.REGISTERED and a.artifact_bytes == len(blob)
    assert [p.name for p in (tmp_path / "artifacts").iterdir()] == [digest]
    assert registry.artifact("digits-strong", "1").read_bytes() == blob


def test_register_refuses_a_duplicate_and_a_missing_artifact(registry):
    digest = registry.put_artifact(b"x")
    registry.register(spec(), digest)
    with pytest.raises(ModelExists):
        registry.register(spec(), digest)
    with pytest.raises(RegistryError, match="upload it first"):
        registry.register(spec(version="9"), "0" * 64)
    with pytest.raises(RegistryError, match="empty"):
        registry.put_artifact(b"")


def test_query_by_task_tag_precision_and_status(registry):
    digest = registry.put_artifact(b"x")
    registry.register(spec("a", tags=["digits"], precision="fp16"), digest)
    registry.register(spec("b", task="ocr", tags=["plates"]), digest)
    registry.register(spec("c", tags=["digits", "canary"]), digest)
    registry.update("c", "1", ModelUpdate(status=ModelStatus.SERVING))
    assert [m.name for m in registry.query(tag="digits")] == ["a", "c"]
    assert [m.name for m in registry.query(task="ocr")] == ["b"]
    assert [m.name for m in registry.query(precision="fp16")] == ["a"]
    assert [m.name for m in registry.query(status=ModelStatus.SERVING)] == ["c"]
    assert [m.name for m in registry.query(task="classification", tag="canary")] == ["c"]


def test_status_moves_only_along_its_lifecycle(registry):
    registry.register(spec(), registry.put_artifact(b"x"))
    registry.update("digits-strong", "1", ModelUpdate(status=ModelStatus.SERVING, replicas=["replica-a"]))
    draining = registry.update("digits-strong", "1", ModelUpdate(status=ModelStatus.DRAINING))
    assert draining.replicas == ["replica-a"] and draining.updated_at >= draining.registered_at
    assert registry.retire("digits-strong", "1").status is ModelStatus.RETIRED
    with pytest.raises(IllegalStatusChange, match="from retired to serving"):
        registry.update("digits-strong", "1", ModelUpdate(status=ModelStatus.SERVING))
    with pytest.raises(ModelNotFound):
        registry.update("nope", "1", ModelUpdate(health="healthy"))


def test_metadata_is_validated_and_survives_a_restart(registry, tmp_path):
    registry.register(spec(latency_ms=12.5, accuracy=0.987, cost_per_1k=0.4), registry.put_artifact(b"x"))
    with pytest.raises(ValueError):
        registry.update("digits-strong", "1", ModelUpdate(accuracy=1.5))
    registry.close()
    reopened = SqliteRegistry(tmp_path / "registry.db", tmp_path / "artifacts")
    reopened.open()
    model = reopened.get("digits-strong", "1")
    assert (model.latency_ms, model.accuracy, model.cost_per_1k) == (12.5, 0.987, 0.4)
    reopened.close()


def routing_with(models: dict) -> RoutingConfig:
    return parse_routing({"models": models, "routes": [{"name": "r", "steps": [{"model": m} for m in models][:1]}]})


def test_rules_name_registry_versions_and_get_their_artifact_and_cost(registry):
    sha = registry.put_artifact(b"onnx bytes")
    registry.register(spec("digits-small", "7", cost_per_1k=0.5), sha)
    priced = {"registry": "digits-small@7", "cost_per_1k": 2.0}
    routing = routing_with({"small": {"registry": "digits-small@7"}, "priced": priced})
    resolved = resolve_registry(routing, registry)
    small, priced = resolved.models["small"], resolved.models["priced"]
    assert small.model_file == registry.artifact("digits-small", "7") and small.model_file.read_bytes() == b"onnx bytes"
    assert (small.cost_per_call, priced.cost_per_call) == (0.0005, 0.002)  # the rules' figure wins when given


def test_an_unknown_or_retired_version_is_refused_by_name(registry):
    sha = registry.put_artifact(b"x")
    registry.register(spec("old", "1"), sha)
    registry.retire("old", "1")
    with pytest.raises(RoutingError) as refused:
        resolve_registry(routing_with({"a": {"registry": "nope@1"}, "b": {"registry": "old@1"}}), registry)
    assert "model a: no model nope 1" in str(refused.value) and "model b: old@1 is retired" in str(refused.value)
    with pytest.raises(RoutingError, match="path or its registry version"):
        routing_with({"a": {"path": "a.onnx", "registry": "old@1"}})


def test_the_router_reports_serving_versions_their_replicas_and_health(registry):
    sha = registry.put_artifact(b"x")
    for version in ("1", "2"):
        registry.register(spec("digits", version), sha)
    first = routing_with({"d": {"registry": "digits@1"}})
    states = {"serve": CircuitState.CLOSED, "triton-grpc://gpu-1:8001": CircuitState.OPEN}
    serving.report(registry, first, lambda model: states)
    one = registry.get("digits", "1")
    assert (one.status, one.health, one.replicas) == (ModelStatus.SERVING, "degraded", sorted(states))

    second = routing_with({"d": {"registry": "digits@2"}})  # a reload moves the traffic to version 2
    serving.report(registry, second, lambda model: {"serve": CircuitState.CLOSED}, previous=first)
    assert registry.get("digits", "1").status is ModelStatus.DRAINING
    two = registry.get("digits", "2")
    assert (two.status, two.health, two.replicas) == (ModelStatus.SERVING, "healthy", ["serve"])
    assert serving.health_of([CircuitState.OPEN, CircuitState.HALF_OPEN]) == "failing"
