"""The detector interface every model kind implements, on whichever backend the config names.

A detector is a *kind* (classification, text detection, OCR, Haar cascade)
doing pre- and post-processing around a *runner* from a backend (ONNX
Runtime, OpenCV DNN, TensorRT). ``make_runner`` hands it the configured
backend's runner for a model file.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np

from common.errors import InferenceError
from common.inference import RunnerFactory, RunnerOptions
from common.inference.runner import Runner
from edge.config import DetectorConfig
from protocol.messages import Prediction

logger = logging.getLogger(__name__)


class Detector(abc.ABC):
    """Loads its model(s) in ``start()``, answers ``predict()``, frees them in ``close()``."""

    kind: ClassVar[str]

    def __init__(self, config: DetectorConfig, runner_factory: Optional[RunnerFactory] = None) -> None:
        self.config = config
        self._runner_factory = runner_factory
        self._runners: list[Runner] = []
        self._started = False

    def make_runner(self, path: Path, output: Optional[str] = None) -> Runner:
        if self._runner_factory is None:
            raise InferenceError(f"{self.kind} detector has no backend")
        options = RunnerOptions(self.config.intra_op_num_threads, self.config.providers or None)
        runner = self._runner_factory(path, output, options)
        self._runners.append(runner)
        return runner

    @abc.abstractmethod
    def start(self) -> None:
        """Load the model(s) and warm up; raise InferenceError if they cannot load."""

    @abc.abstractmethod
    def infer(self, image: np.ndarray) -> Prediction:
        """The model's answer for one frame (BGR or greyscale); raise InferenceError on failure."""

    def blank(self) -> np.ndarray:
        """An input for warm-up."""
        return np.zeros((64, 64, 3), dtype=np.uint8)

    def describe(self) -> str:
        return self.kind

    def engine(self) -> str:
        """What really runs this detector's (first) model; the configured backend's name before start()."""
        return self._runners[0].engine() if self._runners else self.config.type

    def fallback(self) -> str:
        """Why the engine running is not the one configured first (empty: it is)."""
        return self._runners[0].fallback() if self._runners else ""

    def warm_up(self) -> None:
        """Run one blank input so the first real frame does not pay for the engine's lazy set-up.

        The first run allocates buffers and picks kernels (and on TensorRT, may
        load tactics); without this the first frame's latency is several times
        the steady state.
        """
        self.infer(self.blank())
        self._started = True
        logger.info(
            "detector %s on %s: %s from %s", self.kind, self.config.type, self.describe(), self.config.model_path
        )

    def predict(self, image: np.ndarray) -> Prediction:
        if not self._started:
            raise InferenceError("detector used before start()")
        return self.infer(image)

    def predict_many(self, images: list[np.ndarray]) -> list[Prediction]:
        """Several frames' answers (several cameras): one run each here; kinds whose model takes a batch run
        them together."""
        return [self.predict(image) for image in images]

    def close(self) -> None:
        """Free the model(s). Safe to call twice."""
        for runner in self._runners:
            runner.close()
        self._runners.clear()
        self._started = False
