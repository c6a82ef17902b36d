"""The hub's models in its own process (``LocalPool``: the Ingress with ``model_pool: ingress``, and a hub
without Ray): requests that arrive while the model runs go together in the next run."""

from __future__ import annotations

import asyncio

import pytest

from cloud.hub import LocalPool
from cloud.registry import SqliteRegistry
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from protocol.errors import MalformedMessage


def request(image: bytes) -> EscalationRequest:
    return EscalationRequest(
        new_trace_id(),
        "cam-1",
        Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
        EncodedImage("image/png", image, 8, 8),
        5000,
    )


@pytest.fixture
def pool_and_sha(tmp_path, demo_assets):
    registry = SqliteRegistry(tmp_path / "registry.db", tmp_path / "artifacts")
    registry.open()
    sha = registry.put_artifact((demo_assets / "models" / "digits-strong.onnx").read_bytes())
    registry.close()
    return tmp_path / "artifacts", sha


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(pool_and_sha, demo_assets):
    artifacts, sha = pool_and_sha
    images = [p.read_bytes() for p in sorted((demo_assets / "stream" / "images").iterdir())[:40]]
    alone = LocalPool(artifacts, 7680 * 4320, max_batch_size=1)
    batched = LocalPool(artifacts, 7680 * 4320, max_batch_size=16)

    async def answers(pool: LocalPool) -> list:
        backend = pool.backend(sha)
        return await asyncio.gather(*(backend.predict(request(i), None) for i in images))

    one_by_one = asyncio.run(answers(alone))
    together = asyncio.run(answers(batched))
    assert [a.prediction.label for a in together] == [a.prediction.label for a in one_by_one]
    assert max(a.batch_size for a in one_by_one) == 1
    assert max(a.batch_size for a in together) > 1  # the first runs alone; those that waited, together
    assert max(a.batch_size for a in together) <= 16


def test_a_bad_input_fails_only_its_own_request(pool_and_sha, demo_assets):
    artifacts, sha = pool_and_sha
    good = (demo_assets / "stream" / "images" / "000000.png").read_bytes()
    pool = LocalPool(artifacts, 7680 * 4320, max_batch_size=16)

    async def go() -> list:
        backend = pool.backend(sha)
        calls = [backend.predict(request(b"not an image" if i == 3 else good), None) for i in range(8)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(go())
    assert isinstance(results[3], MalformedMessage)
    assert all(not isinstance(r, Exception) for i, r in enumerate(results) if i != 3)
