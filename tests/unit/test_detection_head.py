"""The detection head on ONNX models made here, whose output is a fixed set of candidate boxes: layouts, the
letterbox mapped back, class-aware NMS, the thresholds, and the layouts refused with their reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from common.errors import InferenceError
from common.inference import BACKENDS, RunnerOptions
from common.inference.detect import DetectionHead, DetectionSettings

NAMES = ["cat", "dog"]
SIZE = 64  # the models' input: [1, 3, 64, 64]


def model(path: Path, candidates: np.ndarray, names: str | None = str(dict(enumerate(NAMES)))) -> Path:
    """An ONNX model that answers ``candidates`` (its output, as given) to any image: the image's sum times
    zero is added, so the input is used and every backend runs the graph."""
    const = numpy_helper.from_array(candidates.astype(np.float32), "candidates")
    nodes = [
        helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["candidates", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fixed",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(candidates.shape))],
        [const, numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    made.ir_version = 8
    if names is not None:
        entry = made.metadata_props.add()
        entry.key, entry.value = "names", names
    onnx.save(made, path)
    return path


def v8(*boxes: tuple[float, float, float, float, float, float]) -> np.ndarray:
    """[1, 4 + C, N] from (cx, cy, w, h, cat score, dog score) rows."""
    return np.array(boxes, np.float32).T[np.newaxis]


def head(path: Path, backend: str = "onnx", **settings: float) -> DetectionHead:
    runner = BACKENDS[backend](path, None, RunnerOptions(1, None))
    return DetectionHead(path, runner, settings=DetectionSettings(**settings))  # type: ignore[arg-type]


FRAME = np.zeros((48, 64, 3), np.uint8)  # letterboxed into 64x64: scale 1, 8 px of padding above and below


@pytest.mark.parametrize("backend", ["onnx", "opencv"])
def test_boxes_come_back_in_frame_pixels_with_their_class(tmp_path, backend):
    found = head(model(tmp_path / "m.onnx", v8((32, 32, 20, 10, 0.9, 0.1))), backend).predict(FRAME)
    (box,) = found.boxes
    assert (box.label, round(box.score, 3)) == ("cat", 0.9)
    assert [round(v, 3) for v in (box.x0, box.y0, box.x1, box.y1)] == [22, 19, 42, 29]  # 8 px padding removed
    assert found.labels == ("cat", "dog") and [round(s, 3) for s in found.scores] == [0.9, 0]


def test_the_transposed_layout_gives_the_same_boxes(tmp_path):
    rows = v8((32, 32, 20, 10, 0.9, 0.1), (10, 20, 6, 6, 0.2, 0.7))
    straight = head(model(tmp_path / "a.onnx", rows)).predict(FRAME).boxes
    transposed = head(model(tmp_path / "b.onnx", rows.transpose(0, 2, 1).copy())).predict(FRAME).boxes
    assert straight == transposed and len(straight) == 2


def test_nms_is_per_class_and_the_threshold_drops_weak_candidates(tmp_path):
    rows = v8(
        (32, 32, 20, 20, 0.9, 0.0),
        (33, 32, 20, 20, 0.8, 0.0),  # the same cat again: dropped
        (32, 33, 20, 20, 0.0, 0.85),  # a dog in the same place: kept (another class)
        (10, 10, 4, 4, 0.1, 0.0),  # under conf_threshold: dropped
    )
    boxes = head(model(tmp_path / "m.onnx", rows)).predict(FRAME).boxes
    assert [(b.label, round(b.score, 2)) for b in boxes] == [("cat", 0.9), ("dog", 0.85)]
    looser = head(model(tmp_path / "n.onnx", rows), conf_threshold=0.05).predict(FRAME).boxes
    assert len(looser) == 3


def test_nothing_found_is_all_zero_scores(tmp_path):
    found = head(model(tmp_path / "m.onnx", v8((32, 32, 20, 10, 0.1, 0.1)))).predict(FRAME)
    assert found.boxes == () and found.confidence == 0.0


@pytest.mark.parametrize(
    ("shape", "names", "reason"),
    [
        ((1, 10, 7), NAMES, "objectness column"),  # YOLOv5: 4 + objectness + 2 classes
        ((1, 300, 6), ["a", "b", "c"], "NMS inside"),  # YOLOv10's end-to-end output, for a 3-class model
        ((1, 9, 9), NAMES, "does not fit 2 classes"),
    ],
)
def test_layouts_that_are_not_accepted_say_why(tmp_path, shape, names, reason):
    detector = head(model(tmp_path / "m.onnx", np.zeros(shape, np.float32), names=str(dict(enumerate(names)))))
    with pytest.raises(InferenceError, match=reason):
        detector.predict(FRAME)


def test_a_model_without_class_names_needs_them_from_the_config(tmp_path):
    path = model(tmp_path / "m.onnx", v8((32, 32, 20, 10, 0.9, 0.1)), names=None)
    runner = BACKENDS["onnx"](path, None, RunnerOptions(1, None))
    with pytest.raises(InferenceError, match="no class names"):
        DetectionHead(path, runner)
    named = DetectionHead(path, runner, labels=["fox", "owl"])
    assert named.predict(FRAME).boxes[0].label == "fox"
