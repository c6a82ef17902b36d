"""The detector interface every backend implements."""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from protocol.messages import Prediction


class Detector(abc.ABC):
    """Loads a model in ``start()``, answers ``predict()``, frees it in ``close()``."""

    type_key: ClassVar[str]

    @abc.abstractmethod
    def start(self) -> None:
        """Load the model and warm it up; raise DetectorError if it cannot load."""

    @abc.abstractmethod
    def predict(self, image: np.ndarray) -> Prediction:
        """Class scores for one frame (BGR or greyscale); raise DetectorError on failure."""

    @abc.abstractmethod
    def close(self) -> None:
        """Free the model. Safe to call twice."""
