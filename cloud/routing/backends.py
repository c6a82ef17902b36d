"""The replicas a model can have, as ``ModelBackend``s: the hub's Serve deployment, a Triton server, a parser.

``build_backends`` turns the routing rules' ``models`` into the table the
router calls; the Serve backend comes from ``cloud.app`` (it holds a Ray
handle), so this module runs without Ray.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Optional

import numpy as np

from cloud.errors import HubError
from cloud.models.classifier import pixels
from cloud.routing.config import OnnxModelEntry, ParserModelEntry, RoutingConfig, TritonReplica
from cloud.routing.steps import ModelAnswer, ModelBackend
from common.inference.classify import SCORES_OUTPUT, ClassifierHead
from common.inference.onnx import OrtRunner
from protocol.errors import MalformedMessage
from protocol.messages import EscalationRequest, Prediction

logger = logging.getLogger(__name__)

ServeBackendFactory = Callable[[str, OnnxModelEntry], ModelBackend]


class ParserBackend(ModelBackend):
    """Checks the previous step's top label against a pattern (e.g. a licence-plate format).

    A match passes the answer on with its confidence; a mismatch is an answer too, "invalid" with
    score 0, so the device learns the reading failed the format rather than that the hub broke."""

    INVALID = "invalid"

    def __init__(self, name: str, entry: ParserModelEntry) -> None:
        self._name = name
        self._pattern = re.compile(entry.pattern)

    async def predict(self, request: EscalationRequest, previous: Optional[Prediction]) -> ModelAnswer:
        if previous is None:
            raise HubError(f"parser {self._name} has no previous answer to check")
        started = time.perf_counter()
        ok = self._pattern.fullmatch(previous.label) is not None
        label, score = (previous.label, previous.confidence) if ok else (self.INVALID, 0.0)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return ModelAnswer(Prediction(self._name, "1", (label,), (score,), elapsed_ms))


class TritonBackend(ModelBackend):
    """A model on a server that speaks the Open Inference Protocol v2, called with tritonclient.

    The hub prepares the input and reads the scores itself, by the model's contract (tandem.* metadata,
    input shape), which it reads from the same ONNX file the server serves."""

    def __init__(self, name: str, entry: OnnxModelEntry, replica: TritonReplica) -> None:
        self._name = name
        self._replica = replica
        self._remote = replica.remote_name or name
        contract = OrtRunner(entry.model_file, output=SCORES_OUTPUT)
        self._head = ClassifierHead(entry.model_file, contract)
        self._input = contract.input_name
        self._client: Any = None
        self._module: Any = None

    def _connect(self) -> tuple[Any, Any]:
        if self._client is None:
            if self._replica.protocol == "grpc":
                import tritonclient.grpc.aio as module
            else:
                import tritonclient.http.aio as module
            self._module = module
            self._client = module.InferenceServerClient(self._replica.url)
        return self._client, self._module

    async def predict(self, request: EscalationRequest, previous: Optional[Prediction]) -> ModelAnswer:
        try:
            tensor = self._head.tensor(pixels(request.input)).astype(np.float32)
        except Exception as exc:  # InferenceError or a decoding error: the input is at fault
            raise MalformedMessage(str(exc)) from exc
        client, module = self._connect()
        data = module.InferInput(self._input, list(tensor.shape), "FP32")
        data.set_data_from_numpy(tensor)
        wanted = [module.InferRequestedOutput(SCORES_OUTPUT)]
        started = time.perf_counter()
        timeout_s = self._replica.timeout_ms / 1000.0
        if self._replica.protocol == "grpc":
            reply = await client.infer(self._remote, [data], outputs=wanted, client_timeout=timeout_s)
        else:
            reply = await asyncio.wait_for(client.infer(self._remote, [data], outputs=wanted), timeout_s)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        scores = reply.as_numpy(SCORES_OUTPUT)
        info = self._head.info
        if scores is None or scores.shape != (1, len(info.labels)):
            raise HubError(f"{self._replica.key} answered {None if scores is None else scores.shape} scores")
        return ModelAnswer(Prediction(info.model_id, info.version, info.labels, tuple(scores[0].tolist()), elapsed_ms))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def build_backends(config: RoutingConfig, serve: ServeBackendFactory) -> dict[str, dict[str, ModelBackend]]:
    """model name -> replica key -> backend, for every model in the rules."""
    table: dict[str, dict[str, ModelBackend]] = {}
    for name, entry in config.models.items():
        if isinstance(entry, ParserModelEntry):
            table[name] = {"rule": ParserBackend(name, entry)}
            continue
        table[name] = {
            replica.key: serve(name, entry) if replica.backend == "serve" else TritonBackend(name, entry, replica)
            for replica in entry.replicas
        }
    return table


async def close_backends(table: Mapping[str, Mapping[str, ModelBackend]]) -> None:
    for replicas in table.values():
        for backend in replicas.values():
            try:
                await backend.close()
            except Exception:  # closing an old connection must not stop the new rules from taking over
                logger.exception("closing a replaced backend failed")
