"""A cloud detector: the device's detection head (``common.inference.detect``) on the hub, on the region the
device escalated.

A device may send a crop of its frame (``protocol.regions``). The crop goes back where it came from, in a frame
of the frame's size (``in_frame``; never larger than ``max_image_pixels``), the model runs on that, and the
verdict is the hub's boxes that the crop shows whole plus the device's own boxes it does not (``Region.merge``):
the whole frame, in the frame's pixels, whatever the device sent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.models.base import HubModel, guarded
from cloud.models.classifier import pixels
from common.inference.detect import DetectionHead, DetectionSettings, in_frame
from common.inference.onnx import OrtRunner
from common.inference.preprocess import MAX_IMAGE_PIXELS
from protocol.errors import MalformedMessage
from protocol.messages import EscalationRequest, Prediction
from protocol.regions import Region

# The hub keeps weaker boxes than a device would act on: its answer is the one that stands, and mAP (and a
# later fusion across models) wants the low-scoring tail ranked, not cut.
HUB_SETTINGS = DetectionSettings(conf_threshold=0.05, iou_threshold=0.45, max_detections=100)


class CloudDetector(HubModel):
    def __init__(self, path: Path, runner: OrtRunner, max_image_pixels: int = MAX_IMAGE_PIXELS) -> None:
        super().__init__(runner, max_image_pixels)
        self.head = DetectionHead(path, runner, settings=HUB_SETTINGS)
        self.model_id = self.head.model_id

    @property
    def version(self) -> str:
        return self.head.version

    def answer(self, request: EscalationRequest) -> Prediction:
        [result] = self.predict_requests([request])
        if isinstance(result, Exception):
            raise result
        return result

    def predict_requests(self, requests: list[EscalationRequest]) -> list[Prediction | Exception]:
        """Each request's verdict, the frames run together (``DetectionHead.predict_many``); a request whose input
        or region does not decode gets its own MalformedMessage."""
        prepared = [guarded(self._placed, request) for request in requests]
        ready = [p for p in prepared if not isinstance(p, MalformedMessage)]
        found = iter(self.head.predict_many([frame for frame, _ in ready]) if ready else [])
        results: list[Prediction | Exception] = []
        for request, item in zip(requests, prepared, strict=True):
            if isinstance(item, MalformedMessage):
                results.append(item)
            else:
                results.append(self._whole_frame(next(found), item[1], request.local_prediction))
        return results

    def _placed(self, request: EscalationRequest) -> tuple[np.ndarray, Region]:
        """The escalated image back on its frame (``in_frame``), and where it lies."""
        image = pixels(request.input, self.max_image_pixels)
        region = Region.from_attributes(request.attributes, int(image.shape[1]), int(image.shape[0]))
        if region.width * region.height > self.max_image_pixels:  # the frame is made here: bound it like an image
            raise MalformedMessage(
                f"a {region.width}x{region.height} frame is more than {self.max_image_pixels} pixels"
            )
        return in_frame(region, image), region

    def _whole_frame(self, found: Prediction, region: Region, local: Prediction) -> Prediction:
        if region.whole:
            return found
        return self.head.answer(region.merge(found.boxes, local.boxes), found.inference_ms)
