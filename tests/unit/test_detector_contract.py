"""One contract for every backend and kind that this machine has: the same inputs, a typed Prediction out.

TensorRT needs an NVIDIA GPU and an engine built on it; where it is missing,
its cases skip with the reason ``available()`` gives.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from common.errors import InferenceError
from edge.config import DetectorConfig
from edge.detectors import BACKENDS, available, create_detector
from protocol import Prediction

PLATE_TEXT = "KA51 MX7"


def plate() -> np.ndarray:
    """A licence plate: black text in a white, black-bordered box on grey."""
    image = np.full((120, 400, 3), 200, np.uint8)
    cv2.rectangle(image, (20, 20), (380, 100), (255, 255, 255), -1)
    cv2.rectangle(image, (20, 20), (380, 100), (0, 0, 0), 3)
    cv2.putText(image, PLATE_TEXT, (40, 85), cv2.FONT_HERSHEY_SIMPLEX, 2.0, (0, 0, 0), 5)
    return image


def backend_or_skip(backend: str) -> None:
    status = available()[backend]
    if not status.startswith("ok"):
        pytest.skip(f"backend {backend} {status}")
    if backend == "tensorrt":
        pytest.skip("tensorrt runs engines, not ONNX files: test_tensorrt_engine_matches_onnx_runtime covers it")


def check_prediction(p: Prediction) -> None:
    assert isinstance(p, Prediction) and p.labels and len(p.labels) == len(p.scores)
    assert all(0.0 <= s <= 1.0 for s in p.scores) and p.is_finite
    assert p.inference_ms >= 0


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_classification(backend, demo_assets):
    backend_or_skip(backend)
    detector = create_detector(DetectorConfig(type=backend, model_path=demo_assets / "models" / "digits-weak.onnx"))
    detector.start()
    frames = sorted((demo_assets / "stream" / "images").iterdir())[:20]
    predictions = [detector.predict(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)) for f in frames]
    detector.close()
    for p in predictions:
        check_prediction(p)
        assert p.labels == tuple(str(d) for d in range(10)) and math.isclose(sum(p.scores), 1.0, abs_tol=1e-4)
        assert p.model_id == "digits-weak" and not p.boxes and not p.texts
    reference = create_detector(DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"))
    reference.start()
    expected = [reference.predict(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)) for f in frames]
    assert [p.label for p in predictions] == [p.label for p in expected]  # every backend, the same answers
    assert np.allclose([p.scores for p in predictions], [p.scores for p in expected], atol=1e-4)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_text_detection(backend, ocr_models):
    backend_or_skip(backend)
    detector = create_detector(
        DetectorConfig(type=backend, kind="text_detection", model_path=ocr_models / "ch_PP-OCRv4_det_infer.onnx")
    )
    detector.start()
    found, blank = detector.predict(plate()), detector.predict(np.full((120, 400, 3), 200, np.uint8))
    check_prediction(found)
    assert found.boxes and all(b.label == "text" and 0.5 <= b.score <= 1 for b in found.boxes)
    assert found.confidence == max(b.score for b in found.boxes) > 0.9
    # The boxes lie on the plate and together cover its text (drawn from x 40 to about 360).
    assert all(20 <= b.x0 < b.x1 <= 380 and 20 <= b.y0 < b.y1 <= 100 for b in found.boxes)
    assert min(b.x0 for b in found.boxes) < 60 and max(b.x1 for b in found.boxes) > 330
    check_prediction(blank)
    assert blank.boxes == () and blank.scores == (0.0,)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
def test_ocr_reads_a_plate_with_per_character_confidence(backend, ocr_models):
    backend_or_skip(backend)
    detector = create_detector(
        DetectorConfig(
            type=backend,
            kind="ocr",
            model_path=ocr_models / "ch_PP-OCRv4_det_infer.onnx",
            rec_model_path=ocr_models / "ch_PP-OCRv4_rec_infer.onnx",
        )
    )
    try:
        detector.start()
    except InferenceError as exc:
        # OpenCV 4's DNN cannot run PP-OCRv4's recogniser (a Reshape it mis-sizes): refused at start, clearly.
        assert backend == "opencv" and "failed" in str(exc)
        pytest.xfail(f"{backend}: {exc}")
    p = detector.predict(plate())
    check_prediction(p)
    assert " ".join(p.labels) == PLATE_TEXT  # one line per word, in reading order
    for line in p.texts:
        assert len(line.char_scores) == len(line.text) and all(0 < c <= 1 for c in line.char_scores)
        assert line.box is not None and line.confidence == min(line.char_scores)
    assert p.confidence == max(t.confidence for t in p.texts) > 0.9
    nothing = detector.predict(np.full((120, 400, 3), 200, np.uint8))
    assert nothing.labels == ("",) and nothing.texts == ()


def test_haar_cascade_finds_a_plate_and_nothing_in_a_blank_frame():
    detector = create_detector(DetectorConfig(kind="haar_cascade", model_path="haarcascade_russian_plate_number.xml"))
    detector.start()
    image = np.full((120, 400, 3), 200, np.uint8)
    cv2.rectangle(image, (60, 30), (340, 95), (255, 255, 255), -1)
    cv2.rectangle(image, (60, 30), (340, 95), (0, 0, 0), 3)
    cv2.putText(image, "A123BC 77", (70, 80), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 4)
    found = detector.predict(image)
    check_prediction(found)
    assert found.boxes and all(b.label == "russian_plate_number" and 0 < b.score < 1 for b in found.boxes)
    blank = detector.predict(np.zeros((100, 100), np.uint8))
    assert blank.boxes == () and blank.scores == (0.0,)


def test_opencv_says_which_models_it_cannot_run(demo_assets):
    """The strong model uses scikit-learn's ai.onnx.ml operators, which only ONNX Runtime implements."""
    detector = create_detector(DetectorConfig(type="opencv", model_path=demo_assets / "models" / "digits-strong.onnx"))
    with pytest.raises(InferenceError, match="OpenCV DNN cannot load"):
        detector.start()


def test_missing_backend_is_a_clear_error_and_nothing_else(demo_assets):
    status = available()
    assert set(status) == set(BACKENDS)
    if status["tensorrt"].startswith("off"):
        detector = create_detector(DetectorConfig(type="tensorrt", model_path=demo_assets / "models" / "x.engine"))
        with pytest.raises(InferenceError, match="the tensorrt backend is off"):
            detector.start()
    assert status["onnx"].startswith("ok")  # the others keep working


def test_detector_used_before_start_says_so(demo_assets):
    detector = create_detector(DetectorConfig(model_path=demo_assets / "models" / "digits-weak.onnx"))
    with pytest.raises(InferenceError, match="before start"):
        detector.predict(np.zeros((8, 8), np.uint8))


@pytest.mark.gpu
def test_tensorrt_engine_matches_onnx_runtime(demo_assets, tmp_path):
    """On a GPU: build the weak model's engine with trtexec, run it, and get ONNX Runtime's answers."""
    import shutil

    from tools.build_engine import Build, build_engine

    if not available()["tensorrt"].startswith("ok"):
        pytest.skip(f"backend tensorrt {available()['tensorrt']}")
    trtexec = shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    model = demo_assets / "models" / "digits-weak.onnx"
    engine = build_engine(Build(model, fp16=False, shapes="1:1:8"), tmp_path / "engines", trtexec)
    frames = sorted((demo_assets / "stream" / "images").iterdir())[:50]
    images = [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in frames]
    gpu = create_detector(DetectorConfig(type="tensorrt", model_path=engine))
    cpu = create_detector(DetectorConfig(model_path=model))
    gpu.start()
    cpu.start()
    try:
        for image in images:
            a, b = gpu.predict(image), cpu.predict(image)
            check_prediction(a)
            assert a.label == b.label and np.allclose(a.scores, b.scores, atol=1e-3)
    finally:
        gpu.close()


def test_a_device_says_why_its_backend_is_not_the_one_it_asked_for(demo_assets):
    """The console's hardware-truth cell: CUDA asked for on a build without it runs on the CPU, and says so."""
    import onnxruntime as ort

    model = demo_assets / "models" / "digits-weak.onnx"
    asked = create_detector(
        DetectorConfig(model_path=model, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    )
    plain = create_detector(DetectorConfig(model_path=model))
    asked.start()
    plain.start()
    try:
        if "CUDAExecutionProvider" in ort.get_available_providers():
            assert asked.fallback() == "" and asked.engine() == "onnxruntime:CUDAExecutionProvider"
        else:
            assert asked.engine() == "onnxruntime:CPUExecutionProvider"
            assert asked.fallback().startswith("CUDAExecutionProvider is not in this onnxruntime build")
        assert plain.fallback() == ""  # none named: the best there is, no fallback to speak of
    finally:
        asked.close()
        plain.close()
