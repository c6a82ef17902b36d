"""What the hub's detector, text detector and text recogniser share: an ONNX Runtime session, the v2
protocol's raw tensors, and one verdict per request, a bad input failing only its own."""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, TypeVar

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.onnx import OrtRunner
from protocol.errors import MalformedMessage
from protocol.messages import EscalationRequest, Prediction


class HubModel(abc.ABC):
    model_id: str

    def __init__(self, runner: OrtRunner, max_image_pixels: int) -> None:
        self.runner = runner
        self.max_image_pixels = max_image_pixels

    @property
    def version(self) -> str:
        return "1"

    @property
    def session(self) -> Any:
        return self.runner.session

    @abc.abstractmethod
    def answer(self, request: EscalationRequest) -> Prediction:
        """The verdict for one request; MalformedMessage (or ValueError, cv2.error) when its input is bad."""

    def predict_requests(self, requests: list[EscalationRequest]) -> list[Prediction | Exception]:
        """Each request's verdict, in order; a request whose input does not decode gets its own MalformedMessage
        (the input's fault, never the replica's)."""
        return [guarded(self.answer, request) for request in requests]

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every output for raw named inputs, as the v2 protocol asks (no decoding, no labels)."""
        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, self.session.run(names, inputs), strict=True))
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc


T = TypeVar("T")


def guarded(step: Callable[[EscalationRequest], T], request: EscalationRequest) -> T | MalformedMessage:
    """``step(request)``, or the MalformedMessage that says why the request's input could not be used."""
    try:
        return step(request)
    except MalformedMessage as exc:
        return exc
    except (ValueError, cv2.error) as exc:
        return MalformedMessage(f"escalated input: {exc}")
