"""Object detection with YOLO-family models exported to ONNX, on any backend: letterbox, run, decode, NMS.

Accepted output layouts (``C`` classes, ``N`` candidate boxes):

    [1, 4 + C, N]   Ultralytics' YOLOv8 and YOLO11 detection exports (``yolo export format=onnx``): per
                    candidate the box centre x, y, width and height in input pixels, then C class scores
    [1, N, 4 + C]   the same, transposed (some exporters and TensorRT engines)

Refused, with the reason: YOLOv5's layout (an objectness column, ``[1, N, 5 + C]``) and end-to-end exports
whose NMS is in the graph (YOLOv10, ``[1, K, 6]``; with exactly two classes that shape is read as the
transposed layout, which it then also is). The input is ``[1, 3, H, W]`` RGB in 0-1; a frame is
letterboxed to it with grey 114, as Ultralytics does, and boxes are mapped back to the frame's pixels.

Class names come from ``tandem.labels`` in the model's metadata, else Ultralytics' ``names``, else the
config; the input size from the model's input shape, else Ultralytics' ``imgsz``. Class-aware NMS is
OpenCV's ``NMSBoxesBatched``. Runs on Python 3.10 (the edge imports it).
"""

from __future__ import annotations

import ast
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from common.errors import InferenceError
from common.inference.model_info import model_metadata, read_model_info
from common.inference.runner import Runner
from protocol.messages import Box, Prediction
from protocol.regions import Region

PAD = 114
ACCEPTED = "[1, 4 + C, N] (YOLOv8/YOLO11) or [1, N, 4 + C]"


@dataclass(frozen=True)
class DetectionSettings:
    conf_threshold: float = 0.25  # a candidate scoring below this is no box
    iou_threshold: float = 0.45  # NMS: a box overlapping a better one of its class by more is dropped
    max_detections: int = 100


@dataclass(frozen=True)
class Letterboxed:
    batch: np.ndarray  # float32 [1, 3, H, W]
    scale: float
    left: float
    top: float
    frame: tuple[int, int]  # the frame's height and width


def is_detector(meta: dict[str, str]) -> bool:
    """Whether a model's metadata says it detects objects (Ultralytics writes ``task: detect``)."""
    return meta.get("task") == "detect" or meta.get("tandem.kind") == "detection"


def _names(meta: dict[str, str]) -> tuple[str, ...]:
    """Ultralytics' ``names`` metadata: a Python dict literal {0: 'person', ...} (never executed: literal_eval)."""
    raw = meta.get("names")
    if not raw:
        return ()
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError) as exc:
        raise InferenceError(f"model metadata 'names' is not a dict of class names: {exc}") from exc
    if isinstance(names, dict):
        return tuple(str(names[k]) for k in sorted(names))
    if isinstance(names, (list, tuple)):
        return tuple(str(n) for n in names)
    raise InferenceError("model metadata 'names' is not a dict of class names")


def _input_size(runner: Runner, meta: dict[str, str]) -> tuple[int, int]:
    shape = list(runner.input_shape)
    if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0 and shape[3] > 0:
        return int(shape[2]), int(shape[3])
    try:
        size = ast.literal_eval(meta.get("imgsz", "[640, 640]"))
        return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    except (ValueError, SyntaxError, TypeError, IndexError) as exc:
        raise InferenceError(f"cannot tell the model's input size: {exc}") from exc


def letterbox(image: np.ndarray, height: int, width: int) -> tuple[np.ndarray, float, float, float]:
    """The frame scaled to fit height x width with its aspect kept, centred on grey 114; and the scale and the
    left and top padding that map boxes back."""
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = round(h * scale), round(w * scale)
    top, left = (height - nh) // 2, (width - nw) // 2
    out = np.full((height, width, 3), PAD, np.uint8)
    out[top : top + nh, left : left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    return out, scale, float(left), float(top)


def in_frame(region: Region, image: np.ndarray) -> np.ndarray:
    """An escalated crop back at its frame's scale and place (the image itself when it is the whole frame as
    taken): a detector then sees objects at the size the camera gives them. The rest of the frame is the crop's
    own border pixels carried outwards, not a flat grey, whose hard edge against the crop a detector would
    read as the side of an object."""
    if region.whole and region.scale == 1:
        return image
    size = (region.x1 - region.x0, region.y1 - region.y0)
    if image.shape[1] != size[0] or image.shape[0] != size[1]:
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
    return cv2.copyMakeBorder(
        image,
        region.y0,
        region.height - region.y1,
        region.x0,
        region.width - region.x1,
        cv2.BORDER_REPLICATE,
    )


def candidates(output: np.ndarray, classes: int) -> np.ndarray:
    """The raw output as [N, 4 + C], whichever accepted layout it came in; InferenceError for any other."""
    if output.ndim != 3 or output.shape[0] != 1:
        raise InferenceError(f"detector output of shape {list(output.shape)}; accepted: {ACCEPTED}")
    _, a, b = output.shape
    width = 4 + classes
    if a == width:
        return np.ascontiguousarray(output[0].T)
    if b == width:
        return np.ascontiguousarray(output[0])
    if b == width + 1 or a == width + 1:
        raise InferenceError(
            f"output {list(output.shape)} has an objectness column (YOLOv5's layout); accepted: {ACCEPTED} - "
            "export with Ultralytics 8 or later (YOLOv8, YOLO11)"
        )
    if b == 6 and a != width:
        raise InferenceError(
            f"output {list(output.shape)} looks like an end-to-end export with NMS inside (YOLOv10); accepted: "
            f"{ACCEPTED}"
        )
    raise InferenceError(f"output {list(output.shape)} does not fit {classes} classes; accepted: {ACCEPTED}")


class DetectionHead:
    """The model's boxes for a frame: ``predict`` letterboxes, runs, decodes and keeps the best per object."""

    def __init__(
        self,
        path: Path,
        runner: Runner,
        labels: Sequence[str] = (),
        settings: Optional[DetectionSettings] = None,
    ) -> None:
        self.runner = runner
        self.settings = settings or DetectionSettings()
        meta = model_metadata(path, runner)
        info = read_model_info(path, labels=labels, runner=runner)
        names = info.labels or _names(meta) or tuple(labels)
        if not names:
            raise InferenceError(f"{path.name}: no class names (metadata 'names' or 'tandem.labels', or labels:)")
        self.labels = tuple(names)
        self.model_id = info.model_id
        self.version = info.version or "1"
        self.height, self.width = _input_size(runner, meta)

    def predict(self, image: np.ndarray) -> Prediction:
        return self.predict_many([image])[0]

    def prepare(self, image: np.ndarray) -> Letterboxed:
        """The frame as the model's input: letterboxed, RGB, 0-1, [1, 3, H, W]; and how to map boxes back."""
        boxed, scale, left, top = letterbox(image, self.height, self.width)
        rgb = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB)
        batch = np.ascontiguousarray((rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[np.newaxis])
        return Letterboxed(batch, scale, left, top, (int(image.shape[0]), int(image.shape[1])))

    def predict_many(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        """Each frame's boxes: one run for them all when the runner takes batches (an export with a dynamic batch
        axis, on ONNX Runtime), else one run each."""
        started = time.perf_counter()
        prepared = [self.prepare(image) for image in images]
        if len(prepared) > 1 and self.runner.takes_batches():
            output = self.runner.run(np.concatenate([p.batch for p in prepared]))
            outputs = [output[i : i + 1] for i in range(len(prepared))]
        else:
            outputs = [self.runner.run(p.batch) for p in prepared]
        elapsed_ms = (time.perf_counter() - started) * 1000.0 / len(prepared)
        return [
            self.answer(self.decode(out, p.scale, p.left, p.top, p.frame), elapsed_ms)
            for out, p in zip(outputs, prepared, strict=True)
        ]

    def answer(self, boxes: Sequence[Box], inference_ms: float = 0.0) -> Prediction:
        """A prediction of these boxes: labels and scores hold each class's best box score."""
        best = [0.0] * len(self.labels)
        for b in boxes:
            if b.label in self.labels:
                i = self.labels.index(b.label)
                best[i] = max(best[i], b.score)
        ordered = tuple(sorted(boxes, key=lambda b: -b.score))
        return Prediction(self.model_id, self.version, self.labels, tuple(best), inference_ms, boxes=ordered)

    def decode(self, output: np.ndarray, scale: float, left: float, top: float, frame: tuple[int, ...]) -> list[Box]:
        rows = candidates(output, len(self.labels))
        scores = rows[:, 4:]
        classes = scores.argmax(axis=1)
        best = scores[np.arange(len(rows)), classes]
        keep = best >= self.settings.conf_threshold
        if not keep.any():
            return []
        rows, classes, best = rows[keep], classes[keep], best[keep]
        xywh = np.column_stack([rows[:, 0] - rows[:, 2] / 2, rows[:, 1] - rows[:, 3] / 2, rows[:, 2], rows[:, 3]])
        chosen = cv2.dnn.NMSBoxesBatched(
            xywh.tolist(), best.tolist(), classes.tolist(), self.settings.conf_threshold, self.settings.iou_threshold
        )
        order = sorted((int(i) for i in np.asarray(chosen).reshape(-1)), key=lambda i: -best[i])
        height, width = frame[0], frame[1]
        boxes = []
        for i in order[: self.settings.max_detections]:
            x0 = float(np.clip((xywh[i, 0] - left) / scale, 0, width))
            y0 = float(np.clip((xywh[i, 1] - top) / scale, 0, height))
            x1 = float(np.clip((xywh[i, 0] + xywh[i, 2] - left) / scale, 0, width))
            y1 = float(np.clip((xywh[i, 1] + xywh[i, 3] - top) / scale, 0, height))
            if x1 > x0 and y1 > y0:
                boxes.append(Box(x0, y0, x1, y1, self.labels[int(classes[i])], float(best[i])))
        return boxes
