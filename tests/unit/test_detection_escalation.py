"""What a detection escalation carries and how the hub reads it back: the region geometry, the device's payload
(frame or crop, PNG or JPEG, scaled), box fusion across models, per-camera judges and the box threshold chosen
for an escalation budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from cloud.routing.aggregate import nms, wbf
from common.inference.detect import in_frame
from edge.config import EdgeConfig, EscalationConfig, JudgeConfig
from edge.judge import Judge, JudgeInput, Verdict
from edge.judge.calibrate import box_thresholds, choose_box_threshold
from edge.payload import encode
from protocol.errors import MalformedMessage
from protocol.messages import Box, Prediction
from protocol.regions import Region, around

LABELS = ("disc", "ring")


def boxes_answer(*boxes: Box) -> Prediction:
    best = [max([b.score for b in boxes if b.label == label], default=0.0) for label in LABELS]
    return Prediction("light", "1", LABELS, tuple(best), boxes=boxes)


def frame(width: int = 160, height: int = 120) -> np.ndarray:
    """A camera-like frame: a gradient, some texture, two shapes."""
    ys, xs = np.mgrid[0:height, 0:width]
    image = np.stack([xs * 255 / width, ys * 255 / height, (xs + ys) % 64 * 2], axis=2).astype(np.uint8)
    cv2.circle(image, (110, 60), 9, (20, 200, 40), -1)
    cv2.rectangle(image, (20, 20), (50, 32), (200, 30, 30), -1)
    return image


def test_a_region_round_trips_through_attributes_and_refuses_what_does_not_fit():
    region = Region(10, 20, 90, 60, 160, 120, 0.5)
    assert Region.from_attributes(region.attributes(), 40, 20) == region
    assert Region.from_attributes({}, 160, 120).whole  # no attributes: the whole frame as taken
    with pytest.raises(MalformedMessage, match="is not"):
        Region.from_attributes(region.attributes(), 80, 40)  # the image is not the size the region says
    for bad in ({"tandem.frame": "160,120", "tandem.region": "0,0,200,50"}, {"tandem.frame": "a,b"}):
        with pytest.raises(MalformedMessage):
            Region.from_attributes(bad, 160, 120)


def test_around_grows_the_doubted_boxes_by_the_margin_within_the_frame():
    region = around([Box(100, 50, 120, 70, "disc", 0.3), Box(130, 60, 150, 80, "ring", 0.2)], 0.5, 160, 120)
    # Each box grown by half its own larger side (10 px), then the box holding both, clipped at the frame's edge.
    assert (region.x0, region.y0, region.x1, region.y1) == (90, 40, 160, 90)


def test_a_crop_goes_back_to_its_place_at_the_frames_scale():
    image = frame()
    region = Region(40, 30, 120, 90, 160, 120, 0.5)
    crop = cv2.resize(image[30:90, 40:120], (40, 30), interpolation=cv2.INTER_AREA)
    placed = in_frame(region, crop)
    assert placed.shape == image.shape
    # Outside the crop: its border pixels carried outwards (no flat grey edge for a detector to mistake).
    assert (placed[:30, 40:120] == placed[30, 40:120]).all() and (placed[30:90, :40] == placed[30:90, 40:41]).all()
    inside = placed[30:90, 40:120].astype(int) - image[30:90, 40:120]
    assert np.abs(inside).mean() < 40  # the crop, scaled back up (detail lost at half size, not placement)


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_the_payload_is_the_crop_around_the_doubted_boxes_or_the_frame(fmt):
    image = frame()
    doubted = [Box(100, 50, 120, 70, "disc", 0.3)]
    whole = encode(image, EscalationConfig(image_format=fmt), doubted)
    crop = encode(image, EscalationConfig(image_format=fmt, payload="boxes", crop_margin=0.5), doubted)
    assert whole is not None and crop is not None
    assert whole.attributes == {} and whole.kind == "frame" and (whole.image.width, whole.image.height) == (160, 120)
    region = Region.from_attributes(crop.attributes, crop.image.width, crop.image.height)
    assert (region.x0, region.y0, region.x1, region.y1) == (90, 40, 130, 80) and crop.kind == "crop"
    assert crop.size < whole.size
    decoded = cv2.imdecode(np.frombuffer(crop.image.data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (40, 40, 3)
    if fmt == "png":  # lossless: the very pixels of the frame
        assert (decoded == image[40:80, 90:130]).all()
    # Nothing doubted (an audit, say): the whole frame even with payload: boxes.
    assert encode(image, EscalationConfig(payload="boxes"), []).kind == "frame"


def test_max_side_scales_down_and_says_so():
    sent = encode(frame(), EscalationConfig(max_side=80), [])
    assert sent is not None and (sent.image.width, sent.image.height) == (80, 60)
    region = Region.from_attributes(sent.attributes, 80, 60)
    assert region.whole and region.scale == 0.5


def test_wbf_averages_boxes_found_by_several_models_and_discounts_lone_ones():
    a = boxes_answer(Box(10, 10, 30, 30, "disc", 0.9), Box(100, 100, 120, 120, "ring", 0.6))
    b = boxes_answer(Box(12, 12, 32, 32, "disc", 0.9))
    fused = wbf([(a, 1.0), (b, 1.0)])
    disc = next(x for x in fused.boxes if x.label == "disc")
    ring = next(x for x in fused.boxes if x.label == "ring")
    assert (disc.x0, disc.y0, disc.x1, disc.y1) == pytest.approx((11, 11, 31, 31))
    assert disc.score == pytest.approx(0.9)  # both models found it
    assert ring.score == pytest.approx(0.3)  # one model of two
    assert fused.model_id == "aggregate:wbf" and fused.scores == pytest.approx((0.9, 0.3))


def test_nms_across_models_keeps_the_best_of_each_object_and_every_class():
    a = boxes_answer(Box(10, 10, 30, 30, "disc", 0.7), Box(10, 10, 30, 30, "ring", 0.4))
    b = boxes_answer(Box(11, 11, 31, 31, "disc", 0.8))
    kept = nms([(a, 1.0), (b, 1.0)]).boxes
    assert [(x.label, x.score) for x in kept] == [("disc", pytest.approx(0.8)), ("ring", pytest.approx(0.4))]


def test_box_thresholds_per_class_and_unknown_classes_escalate_and_name_their_boxes():
    config = JudgeConfig(
        confidence_threshold=0.0,
        box_threshold=0.5,
        box_class_thresholds={"ring": 0.8},
        max_weak_box_share=0.0,
        unknown_labels=["unknown"],
    )
    judge = Judge.from_config(config)
    sure = Box(0, 0, 10, 10, "disc", 0.7)
    ring = Box(20, 20, 30, 30, "ring", 0.7)  # above box_threshold, below its class's
    assert judge.decide(JudgeInput(boxes_answer(sure))).verdict is Verdict.KEEP
    assert judge.decide(JudgeInput(boxes_answer(sure, ring))).verdict is Verdict.ESCALATE
    assert judge.uncertain_boxes(boxes_answer(sure, ring)) == [ring]
    unknown = Box(40, 40, 50, 50, "unknown", 0.99)
    odd = Prediction("light", "1", ("disc", "unknown"), (0.7, 0.99), boxes=(sure, unknown))
    assert judge.decide(JudgeInput(odd)).verdict is Verdict.ESCALATE
    assert judge.uncertain_boxes(odd) == [unknown]


def test_the_box_threshold_is_the_highest_within_the_escalation_budget():
    answers = [boxes_answer(Box(0, 0, 10, 10, "disc", s)) for s in (0.2, 0.4, 0.6, 0.8)]
    judge = JudgeConfig(confidence_threshold=0.0, max_weak_box_share=0.0)
    assert box_thresholds(answers, judge, [0.1, 0.5, 0.9]) == [(0.1, 0.0), (0.5, 0.5), (0.9, 1.0)]
    threshold, rate = choose_box_threshold(answers, judge, 0.25)
    assert rate == 0.25 and threshold == pytest.approx(0.4)  # 0.41 would escalate the 0.4 frame too


def test_each_camera_may_have_its_own_judge_and_ids_must_differ(tmp_path):
    base = {"device_id": "d1", "detector": {"model_path": str(tmp_path / "m.onnx")}, "judge": {"box_threshold": 0.3}}
    cams = [
        {"kind": "images", "path": str(tmp_path), "source_id": "gate"},
        {"kind": "images", "path": str(tmp_path), "source_id": "yard", "judge": {"box_threshold": 0.6}},
    ]
    config = EdgeConfig.model_validate({**base, "sources": cams})
    assert [c.source_id for c in config.cameras] == ["gate", "yard"] and config.source is None
    with pytest.raises(ValueError, match="own source_id"):
        EdgeConfig.model_validate({**base, "sources": [cams[0], cams[0]]})
    with pytest.raises(ValueError, match="not both"):
        EdgeConfig.model_validate({**base, "sources": cams, "source": cams[0]})
    with pytest.raises(ValueError, match="box_threshold"):
        EdgeConfig.model_validate({**base, "sources": [{**cams[1], "judge": {"box_threshold": 7}}]})


@pytest.mark.parametrize("backend", ["onnx", "opencv"])
def test_several_cameras_frames_in_one_call_answer_as_one_at_a_time(detect_models, backend):
    from edge.config import DetectorConfig
    from edge.detectors import create_detector

    model = detect_models / "models" / "shapes-light.onnx"
    detector = create_detector(DetectorConfig(type=backend, kind="detection", model_path=model, conf_threshold=0.2))
    detector.start()
    try:
        images = [cv2.imread(str(p)) for p in sorted((detect_models / "stream").glob("*.png"))[:4]]
        together = detector.predict_many(images)
        alone = [detector.predict(image) for image in images]
    finally:
        detector.close()
    assert len(together) == 4 and any(p.boxes for p in alone)
    for a, b in zip(together, alone, strict=True):
        assert [(x.label, round(x.x0, 1), round(x.y0, 1)) for x in a.boxes] == [
            (x.label, round(x.x0, 1), round(x.y0, 1)) for x in b.boxes
        ]
        assert a.scores == pytest.approx(b.scores, abs=1e-5)


def test_the_hubs_detector_answers_a_crop_for_the_whole_frame_and_bounds_the_frame_it_makes(detect_models):
    from cloud.models import CloudDetector, load_model
    from protocol.messages import EscalationRequest, new_trace_id

    hub = load_model(detect_models / "models" / "shapes-strong.onnx", max_image_pixels=160 * 120)
    assert isinstance(hub, CloudDetector)
    image = cv2.imread(str(sorted((detect_models / "stream").glob("*.png"))[0]))
    outside = Box(0, 0, 6, 6, "disc", 0.3)  # the device's own box, in a corner the crop leaves out
    local = boxes_answer(Box(100, 50, 120, 70, "disc", 0.3), outside)
    sent = encode(image, EscalationConfig(payload="boxes", image_format="png"), [local.boxes[0]])
    assert sent is not None and sent.kind == "crop"

    def ask(attributes: dict[str, str]):
        request = EscalationRequest(new_trace_id(), "cam", local, sent.image, 5000, attributes=attributes)
        return hub.predict_requests([request])[0]

    answer = ask(sent.attributes)
    region = Region.from_attributes(sent.attributes, sent.image.width, sent.image.height)
    assert isinstance(answer, Prediction) and outside in answer.boxes  # outside the crop: the device's box stands
    assert all(region.shows(b) for b in answer.boxes if b != outside)  # inside: only boxes the crop shows whole
    # A crop that claims to come from a huge frame is refused before that frame is made.
    huge = {**sent.attributes, "tandem.frame": "30000,30000"}
    assert isinstance(ask(huge), MalformedMessage)
