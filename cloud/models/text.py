"""A cloud text detector: PP-OCR's detector (``common.inference.text``) on the hub, answering for the whole frame.

It finds text in what the device sent (a crop is mapped back through its region, ``protocol.regions``) and
answers with boxes labelled ``text``, in the frame's pixels. Before a recogniser in a ``chain``, its boxes are
what the recogniser reads (``cloud.routing``: a hub step reads the answer so far), so a device that sends the
frame alone gets it read.
"""

from __future__ import annotations

import time

from cloud.models.base import HubModel
from cloud.models.classifier import pixels
from common.inference.text import axis_box, find_text
from protocol.messages import EscalationRequest, Prediction
from protocol.regions import Region

MIN_SIDE, MAX_SIDE = 96, 1280  # a device's defaults are 96 and 960: the hub can afford a larger frame


class CloudTextDetector(HubModel):
    model_id = "pp-ocr-det"

    def answer(self, request: EscalationRequest) -> Prediction:
        started = time.perf_counter()
        image = pixels(request.input, self.max_image_pixels)
        region = Region.from_attributes(request.attributes, int(image.shape[1]), int(image.shape[0]))
        found = find_text(self.runner, image, MIN_SIDE, MAX_SIDE)
        boxes = tuple(region.to_frame(axis_box(corners, "text", score)) for corners, score in found)
        best = max((b.score for b in boxes), default=0.0)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return Prediction(self.model_id, self.version, ("text",), (best,), elapsed_ms, boxes=boxes)
