"""Train the demo's weak and strong digit classifiers and write the held-out stream.

    python -m tools.demo_models [OUT_DIR]      # default: .tandem/demo

Everything comes from scikit-learn's bundled digits data (8x8 greyscale,
1,797 images), so nothing is downloaded. It is split three ways: 56% trains
both models, 14% is the calibration stream the judge's thresholds are picked
on, and 30% is the held-out stream the demo and the benchmark play. With a fixed seed and a stratified
held-out split, two runs write byte-identical models.

OUT_DIR/
  models/digits-weak.onnx    logistic regression: one matrix product, cheap enough for any device; plain
                             ONNX operators only (MatMul, Add, Softmax), so ONNX Runtime, OpenCV DNN and
                             TensorRT all run it
  models/digits-strong.onnx  RBF support-vector machine with calibrated probabilities
  stream/digits.avi          the held-out split as 32x32 greyscale video (FFV1 in AVI:
                             lossless and, unlike Matroska, byte-identical between runs)
  stream/images/NNNNNN.png   the same frames as an image folder
  stream/labels.csv          frame,file,label for both
  calibration/               a second labelled stream, split off the training data before
                             training, for `tandem edge calibrate` (same layout as stream/)
  manifest.json              sha256 of each file and each model's held-out accuracy

Both models take ``image``: float32 [N, 1, 8, 8], pixel values 0-255, and
return ``scores``: float32 [N, 10] class probabilities (and ``label``). The
edge and the hub resize a frame to the model's declared input, so a model with
another input size drops in unchanged. The scaling to the 0-16 range the
digits data uses is part of each ONNX graph.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, compose, helper
from skl2onnx import to_onnx
from sklearn.calibration import CalibratedClassifierCV
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

SEED = 20261122
HELD_OUT_SHARE = 0.3
CALIBRATION_SHARE = 0.2  # of what is left after the held-out split: 14% of the data
FRAME_SIZE = 32  # the stream's frames are the 8x8 digits scaled up 4x
LABELS = [str(d) for d in range(10)]
OPSET = 17


def _pool(images: np.ndarray, factor: int) -> np.ndarray:
    """Average factor x factor blocks: [N, 8, 8] -> [N, 8/f, 8/f]."""
    n, h, w = images.shape
    return images.reshape(n, h // factor, factor, w // factor, factor).mean(axis=(2, 4))


def _preprocess_graph(pool: int, features: int) -> onnx.ModelProto:
    """ONNX graph: image [N,1,8,8] in 0-255 -> features [N, features] in the digits' 0-16 range."""
    nodes = []
    src = "image"
    if pool > 1:
        nodes.append(
            helper.make_node("AveragePool", [src], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool])
        )
        src = "pooled"
    nodes += [
        helper.make_node("Reshape", [src, "flat_shape"], ["flat"]),
        helper.make_node("Mul", ["flat", "to_digits_range"], ["features"]),
    ]
    graph = helper.make_graph(
        nodes,
        "preprocess",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", features])],
        initializer=[
            helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, features]),
            helper.make_tensor("to_digits_range", TensorProto.FLOAT, [], [16.0 / 255.0]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _export(estimator: object, pool: int, model_id: str, accuracy: float) -> bytes:
    features = (8 // pool) ** 2
    sample = np.zeros((1, features), dtype=np.float32)
    # skl2onnx reads SVC.probA_/probB_, which scikit-learn 1.9 flags as deprecated
    # even when, as here, they are unused (calibration happens outside the SVC).
    warnings.filterwarnings("ignore", message="Attribute `prob[AB]_` was deprecated", category=FutureWarning)
    classifier = to_onnx(
        estimator,
        sample,
        options={id(estimator): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    input_name = classifier.graph.input[0].name
    prep = _preprocess_graph(pool, features)
    prep.ir_version = classifier.ir_version
    model = compose.merge_models(prep, classifier, io_map=[("features", input_name)])
    # Give the outputs the names the runtimes read.
    renames = {"output_label": "label", "output_probability": "scores", "probabilities": "scores"}
    for node in model.graph.node:
        node.input[:] = [renames.get(i, i) for i in node.input]
        node.output[:] = [renames.get(o, o) for o in node.output]
    for output in model.graph.output:
        output.name = renames.get(output.name, output.name)
    return _finish(model, model_id, accuracy)


def _export_linear(estimator: LogisticRegression, model_id: str, accuracy: float) -> bytes:
    """A logistic regression as plain ONNX: image -> flatten -> x 16/255 -> MatMul -> Add -> Softmax -> scores.

    skl2onnx would use the ai.onnx.ml LinearClassifier operator, which only
    ONNX Runtime implements; a device's TensorRT or OpenCV DNN needs the
    standard operators.
    """
    weights = estimator.coef_.T.astype(np.float32)  # [64, 10]
    bias = estimator.intercept_.astype(np.float32)  # [10]
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
            helper.make_node("Mul", ["flat", "to_digits_range"], ["features"]),
            helper.make_node("MatMul", ["features", "weights"], ["logits_raw"]),
            helper.make_node("Add", ["logits_raw", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
        ],
        "digits_linear",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", len(LABELS)])],
        initializer=[
            helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, 64]),
            helper.make_tensor("to_digits_range", TensorProto.FLOAT, [], [16.0 / 255.0]),
            helper.make_tensor("weights", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
            helper.make_tensor("bias", TensorProto.FLOAT, list(bias.shape), bias.tolist()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return _finish(model, model_id, accuracy)


def _finish(model: onnx.ModelProto, model_id: str, accuracy: float) -> bytes:
    model.producer_name = "tandem tools.demo_models"
    model.producer_version = "1"
    model.doc_string = f"{model_id}: digits classifier, held-out accuracy {accuracy:.4f}"
    metadata = {"tandem.model_id": model_id, "tandem.model_version": "1", "tandem.labels": json.dumps(LABELS)}
    del model.metadata_props[:]
    for key, value in metadata.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _frames(images: np.ndarray) -> np.ndarray:
    """8x8 digits in 0-16 -> FRAME_SIZE x FRAME_SIZE uint8 greyscale frames."""
    pixels = np.rint(images * (255.0 / 16.0)).astype(np.uint8)
    scale = FRAME_SIZE // 8
    return pixels.repeat(scale, axis=1).repeat(scale, axis=2)


def _write_stream(out: Path, frames: np.ndarray, labels: np.ndarray) -> list[Path]:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    video_path = out / "digits.avi"
    writer = cv2.VideoWriter(
        str(video_path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (FRAME_SIZE, FRAME_SIZE), isColor=False
    )
    if not writer.isOpened():
        raise SystemExit("this OpenCV build cannot write FFV1 video")
    rows = []
    for index, (frame, label) in enumerate(zip(frames, labels, strict=True)):
        name = f"{index:06d}.png"
        cv2.imwrite(str(images / name), frame)
        writer.write(frame)
        rows.append((index, name, int(label)))
    writer.release()
    with (out / "labels.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["frame", "file", "label"])
        w.writerows(rows)
    return [video_path, out / "labels.csv"]


def build(out: Path) -> dict[str, object]:
    digits = load_digits()
    images = digits.images.astype(np.float32)
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=HELD_OUT_SHARE, random_state=SEED, stratify=digits.target
    )
    train_x, calib_x, train_y, calib_y = train_test_split(
        train_x, train_y, test_size=CALIBRATION_SHARE, random_state=SEED, stratify=train_y
    )
    models_dir = out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {
        "seed": SEED,
        "trained_on": len(train_y),
        "calibration": len(calib_y),
        "held_out": len(test_y),
        "models": {},
        "files": {},
    }
    specs = [
        ("digits-weak", LogisticRegression(max_iter=2000, C=0.5), 1),
        # Probabilities from 5-fold sigmoid calibration (SVC's own probability=True is deprecated).
        ("digits-strong", CalibratedClassifierCV(SVC(C=10.0, gamma="scale"), cv=5), 1),
    ]
    for model_id, estimator, pool in specs:
        estimator.fit(_pool(train_x, pool).reshape(len(train_x), -1), train_y)
        accuracy = float(estimator.score(_pool(test_x, pool).reshape(len(test_x), -1), test_y))
        path = models_dir / f"{model_id}.onnx"
        if isinstance(estimator, LogisticRegression):
            path.write_bytes(_export_linear(estimator, model_id, accuracy))
        else:
            path.write_bytes(_export(estimator, pool, model_id, accuracy))
        report["models"][model_id] = {"path": str(path.relative_to(out)), "held_out_accuracy": round(accuracy, 4)}  # type: ignore[index]
    written = _write_stream(out / "stream", _frames(test_x), test_y)
    written += _write_stream(out / "calibration", _frames(calib_x), calib_y)
    for path in [*(models_dir / f"{m}.onnx" for m, _, _ in specs), *written]:
        report["files"][str(path.relative_to(out))] = hashlib.sha256(path.read_bytes()).hexdigest()  # type: ignore[index]
    (out / "manifest.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train and export the demo digit classifiers.")
    parser.add_argument(
        "out", nargs="?", default=".tandem/demo", type=Path, help="output folder (default .tandem/demo)"
    )
    args = parser.parse_args(argv)
    report = build(args.out)
    for model_id, info in report["models"].items():  # type: ignore[union-attr]
        print(f"{model_id}: held-out accuracy {info['held_out_accuracy']:.4f}")
    print(f"wrote {args.out} ({report['held_out']} held-out frames)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
