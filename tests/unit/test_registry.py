"""The model registry's store, without Ray: versions, content-addressed artifacts, queries, status rules."""

import hashlib

import pytest

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
