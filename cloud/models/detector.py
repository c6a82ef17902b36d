"""A cloud detector: the device's detection head (``common.inference.detect``) on the hub, on the region the
device escalated.

A device may send a crop of its frame (``protocol.regions``). The crop goes back where it came from on a blank
frame, the model runs on that, and the verdict is the hub's boxes that the crop shows whole plus the device's
own boxes it does not (``Region.merge``): the whole frame, in the frame's pixels, whatever the device sent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cloud.models.classifier import pixels
from common.errors import InferenceError
from common.inference.detect import DetectionHead, DetectionSettings, in_frame
from common.inference.onnx import OrtRunner
from common.inference.preprocess import MAX_IMAGE_PIXELS
from protocol.errors import MalformedMessage
from protocol.messages import EscalationRequest, Prediction
from protocol.regions import Region

# The hub keeps weaker boxes than a device would act on: its answer is the one that stands, and mAP (and a
# later fusion across models) wants the low-scoring tail ranked, not cut.
HUB_SETTINGS = DetectionSettings(conf_threshold=0.05, iou_threshold=0.45, max_detections=100)


class CloudDetector:
    def __init__(self, path: Path, runner: OrtRunner, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self.runner = runner
        self.head = DetectionHead(path, runner, settings=HUB_SETTINGS)
        self._max_pixels = max_image_pixels

    @property
    def model_id(self) -> str:
        return self.head.model_id

    @property
    def version(self) -> str:
        return self.head.version

    @property
    def session(self) -> Any:
        return self.runner.session

    def predict_requests(self, requests: list[EscalationRequest]) -> list[Prediction | Exception]:
        """Each request's verdict, the frames run together (``DetectionHead.predict_many``); a request whose input
        or region does not decode gets its own MalformedMessage."""
        frames: list[np.ndarray] = []
        regions: list[Region] = []
        results: list[Prediction | Exception] = []
        for request in requests:
            try:
                image = pixels(request.input, self._max_pixels)
                region = Region.from_attributes(request.attributes, int(image.shape[1]), int(image.shape[0]))
                frames.append(in_frame(region, image))
                regions.append(region)
                results.append(_PENDING)
            except MalformedMessage as exc:
                results.append(exc)
            except (ValueError, cv2.error) as exc:
                results.append(MalformedMessage(f"escalated input: {exc}"))
        if frames:
            answers = iter(zip(self.head.predict_many(frames), regions, strict=True))
            pending = [i for i, r in enumerate(results) if r is _PENDING]
            for index in pending:
                found, region = next(answers)
                results[index] = self._whole_frame(found, region, requests[index].local_prediction)
        return results

    def _whole_frame(self, found: Prediction, region: Region, local: Prediction) -> Prediction:
        if region.whole:
            return found
        return self.head.answer(region.merge(found.boxes, local.boxes), found.inference_ms)

    def run_tensors(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, self.session.run(names, inputs), strict=True))
        except Exception as exc:  # onnxruntime's errors carry no stable types
            raise InferenceError(f"{self.model_id}: inference failed: {exc}") from exc


_PENDING = MalformedMessage("not run")  # a placeholder while the batch is put together
