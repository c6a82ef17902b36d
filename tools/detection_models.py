"""Train the detection demo's light and strong detectors on generated scenes; export them in YOLOv8's ONNX layout.

    python -m tools.detection_models [OUT_DIR]      # default: .tandem/detect; kept when built by this recipe

No detection weights can be downloaded here, so the scenes are made here: discs, rings, bars (lying) and posts
(standing) 12-44 px across, some faint, some small, some cut by the frame's edge, on camera-like backgrounds
(gradients, sensor noise, thin clutter lines and streaks) under varied lighting and blur. Both models are trained
with PyTorch on the CPU, a tool step that never runs on a device or the hub (``torch==2.13.0``, the CPU build,
installed for the tools only), in about 3 minutes on 2 cores (README, "The detection models").

OUT_DIR/
  models/shapes-light.onnx   a small detector (the device's): 27k parameters
  models/shapes-strong.onnx  a larger one (the hub's): 181k parameters
  stream/NNNNNN.png          the held-out scenes, 160x120 like a small camera frame
  stream/labels.json         each frame's boxes: {"file": [[x0, y0, x1, y1, class], ...]}
  calibration/               a second labelled set, for picking the judge's thresholds
  manifest.json              sha256 of each file, each model's held-out mAP@0.5 and training time, the recipe

Both models take ``images``: float32 [N, 3, 128, 128], RGB in 0-1, letterboxed, and return ``output0``: float32
[N, 4 + 4, 256] - for each of the 16x16 cells of stride 8, the box centre, width and height in input pixels,
then the four class scores - which is what Ultralytics' YOLOv8 and YOLO11 detection exports return (with 8400
cells over three strides at 640). A class score learns the IoU of its cell's box (GFL's quality focal loss),
so the best-placed box ranks first. The ONNX metadata carries ``names``, ``imgsz``, ``stride`` and ``task`` as
Ultralytics writes them, so the device and the hub read these models and a user's own export the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.inference.detect import letterbox
from edge.judge.calibrate import box_iou, boxes_array, mean_ap

CLASSES = ["disc", "ring", "bar", "post"]
FRAME_W, FRAME_H = 160, 120
INPUT = 128
STRIDE = 8
SEED = 20261130
TRAIN_SCENES = 2000
HELD_OUT_SCENES = 300
CALIBRATION_SCENES = 200
OPSET = 17
LEARNING_RATE = 4e-3  # Adam's, at the top of a one-cycle schedule
BATCH = 32


# -- scenes ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scene:
    image: np.ndarray  # BGR uint8 [FRAME_H, FRAME_W, 3]
    boxes: np.ndarray  # float32 [K, 5]: x0, y0, x1, y1, class


def _background(rng: np.random.Generator) -> np.ndarray:
    """A gradient, a few clutter shapes in muted colours, sensor noise."""
    base = rng.uniform(40, 200, 3)
    tilt = rng.uniform(-60, 60, 3)
    ramp = np.linspace(0, 1, FRAME_W)[None, :, None] * tilt + np.linspace(0, 1, FRAME_H)[:, None, None] * tilt[::-1]
    image = np.clip(base + ramp, 0, 255).astype(np.float32)
    for _ in range(rng.integers(2, 7)):  # clutter: lines and blotches that are no class
        colour = tuple(float(c) for c in rng.uniform(30, 220, 3))
        p0 = (int(rng.integers(0, FRAME_W)), int(rng.integers(0, FRAME_H)))
        p1 = (int(rng.integers(0, FRAME_W)), int(rng.integers(0, FRAME_H)))
        if rng.random() < 0.5:
            cv2.line(image, p0, p1, colour, int(rng.integers(1, 3)))
        else:
            axes = (int(rng.integers(12, 30)), int(rng.integers(1, 3)))  # long and thin: thinner than any bar
            cv2.ellipse(image, p0, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1)
    return image


def _draw(image: np.ndarray, cls: int, cx: float, cy: float, size: float, angle: float, colour: tuple) -> None:
    """One object: a disc, a ring (a disc with a hole), a bar (lying) or a post (standing), ``size`` across."""
    r = size / 2
    if cls == 0:
        cv2.circle(image, (round(cx), round(cy)), max(1, round(r)), colour, -1, cv2.LINE_AA)
        return
    if cls == 1:  # a ring: its band is 45% of the radius, so the hole shows the background
        band = max(2, round(r * 0.45))
        cv2.circle(image, (round(cx), round(cy)), max(1, round(r - band / 2)), colour, band, cv2.LINE_AA)
        return
    w, h = r, r / 2.6  # a bar; a post is a bar turned upright
    if cls == 3:
        angle += math.pi / 2
    points = [(-w, -h), (w, -h), (w, h), (-w, h)]
    c, s = math.cos(angle), math.sin(angle)
    poly = np.array([[cx + x * c - y * s, cy + x * s + y * c] for x, y in points], dtype=np.float32)
    cv2.fillPoly(image, [np.round(poly * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


def _extent(cls: int, cx: float, cy: float, size: float, angle: float) -> tuple[float, float, float, float]:
    """The drawn shape's axis-aligned box (a rotated square's is wider than its side)."""
    mask = np.zeros((FRAME_H + 2 * 64, FRAME_W + 2 * 64), np.uint8)
    _draw(mask, cls, cx + 64, cy + 64, size, angle, (255,))
    ys, xs = np.nonzero(mask)
    return float(xs.min() - 64), float(ys.min() - 64), float(xs.max() - 64 + 1), float(ys.max() - 64 + 1)


def scene(rng: np.random.Generator) -> Scene:
    image = _background(rng)
    boxes: list[list[float]] = []
    for _ in range(rng.integers(0, 5)):
        cls = int(rng.integers(0, len(CLASSES)))
        size = float(rng.uniform(12, 44))
        cx, cy = float(rng.uniform(0, FRAME_W)), float(rng.uniform(0, FRAME_H))
        angle = float(rng.uniform(-0.35, 0.35))  # bars and posts lean a little
        x0, y0, x1, y1 = _extent(cls, cx, cy, size, angle)
        cut = [max(0.0, x0), max(0.0, y0), min(float(FRAME_W), x1), min(float(FRAME_H), y1)]
        if (cut[2] - cut[0]) * (cut[3] - cut[1]) < 0.5 * (x1 - x0) * (y1 - y0):
            continue  # mostly outside the frame
        if any(box_iou(cut, b[:4]) > 0.2 for b in boxes):
            continue
        local = image[int(cut[1]) : int(cut[3]) + 1, int(cut[0]) : int(cut[2]) + 1].mean(axis=(0, 1))
        # Away from the background in every channel, by 60-130 levels: some faint, most clear, none invisible.
        away = np.where(local > 127, -1.0, 1.0)
        colour = tuple(float(c) for c in np.clip(local + away * rng.uniform(60, 130, 3), 0, 255))
        _draw(image, cls, cx, cy, size, angle, colour)
        boxes.append([*cut, float(cls)])
    gain, offset = rng.uniform(0.6, 1.4), rng.uniform(-30, 30)  # lighting
    image = image * gain + offset + rng.normal(0, rng.uniform(2, 7), image.shape)  # and sensor noise
    sigma = rng.uniform(0, 1.0)
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    frame = np.clip(image, 0, 255).astype(np.uint8)
    return Scene(frame, np.array(boxes, np.float32).reshape(-1, 5))


# -- models ---------------------------------------------------------------------------------------------------


def _network(layers: tuple[tuple[int, int], ...]):
    """3x3 convolutions (channels, stride) down to stride 8, then a 1x1 head of 4 + classes per cell."""
    from torch import nn

    made: list[nn.Module] = []
    cin = 3
    for cout, stride in layers:
        made += [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.SiLU()]
        cin = cout
    return nn.Sequential(*made, nn.Conv2d(cin, 4 + len(CLASSES), 1))


def _decode(raw, grid):
    """Raw head output [B, 4 + C, H, W] -> YOLOv8's layout [B, 4 + C, H*W]: centre, size in pixels, class scores."""
    import torch

    b, _, h, w = raw.shape
    flat = raw.reshape(b, 4 + len(CLASSES), h * w)
    # The centre may lie up to 2 cells from the cell's own: a box also trains the neighbours its centre is
    # near (``_targets``), on either side.
    centre = (grid + 0.5 + flat[:, 0:2].sigmoid() * 4 - 2) * STRIDE
    size = torch.exp(flat[:, 2:4].clamp(-4, 4)) * STRIDE * 2
    return torch.cat([centre, size, flat[:, 4:].sigmoid()], 1)


def _grid(cells: int):
    import torch

    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)]).float()[None]  # [1, 2, H*W]


def _targets(boxes: list[np.ndarray], cells: int):
    """Per cell: its class (-1: background) and box. A box owns the cell holding its centre and those neighbours
    whose centres lie inside it (more positives train faster); a cell two boxes claim goes to the smaller."""
    import torch

    cls = torch.full((len(boxes), cells * cells), -1, dtype=torch.long)
    box = torch.zeros((len(boxes), 4, cells * cells))
    area = torch.full((len(boxes), cells * cells), float("inf"))
    for i, found in enumerate(boxes):
        for x0, y0, x1, y1, c in found:
            gx, gy = int((x0 + x1) / 2 / STRIDE), int((y0 + y1) / 2 / STRIDE)
            a = float((x1 - x0) * (y1 - y0))
            for dx in (-1, 0, 1):
                for dy in (-1, 0, 1):
                    cx, cy = gx + dx, gy + dy
                    if not (0 <= cx < cells and 0 <= cy < cells):
                        continue
                    inside = x0 <= (cx + 0.5) * STRIDE <= x1 and y0 <= (cy + 0.5) * STRIDE <= y1
                    if (dx or dy) and not inside:
                        continue
                    k = cy * cells + cx
                    if a < area[i, k]:
                        area[i, k], cls[i, k] = a, int(c)
                        box[i, :, k] = torch.tensor(
                            [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32
                        )
    return cls, box


def _giou_loss(pred, target):
    """1 - GIoU of [N, 4] centre-size boxes, and their IoU."""
    import torch

    def corners(b):
        return b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2

    px0, py0, px1, py1 = corners(pred)
    tx0, ty0, tx1, ty1 = corners(target)
    inter = (torch.min(px1, tx1) - torch.max(px0, tx0)).clamp(0) * (torch.min(py1, ty1) - torch.max(py0, ty0)).clamp(0)
    union = pred[:, 2] * pred[:, 3] + target[:, 2] * target[:, 3] - inter
    iou = inter / union.clamp(min=1e-6)
    hull = (torch.max(px1, tx1) - torch.min(px0, tx0)) * (torch.max(py1, ty1) - torch.min(py0, ty0))
    return 1 - iou + (hull - union) / hull.clamp(min=1e-6), iou


def _tensor(scenes: list[Scene]):
    """Letterboxed RGB 0-1 images [N, 3, INPUT, INPUT] and each scene's boxes in input pixels."""
    import torch

    images, boxes = [], []
    for s in scenes:
        boxed, scale, left, top = letterbox(s.image, INPUT, INPUT)  # the device's own letterbox
        images.append(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).transpose(2, 0, 1))
        moved = s.boxes.copy()
        moved[:, [0, 2]] = moved[:, [0, 2]] * scale + left
        moved[:, [1, 3]] = moved[:, [1, 3]] * scale + top
        boxes.append(moved)
    return torch.from_numpy(np.stack(images)).float() / 255.0, boxes


def train(layers: tuple[tuple[int, int], ...], scenes: list[Scene], epochs: int, seed: int, second_thread_at: int = 0):
    """A detector trained on ``scenes`` (with flips), Adam and a one-cycle schedule; returns it in eval mode.

    From epoch ``second_thread_at`` on (0: from the start) it trains on two threads, before it on one."""
    import torch

    torch.manual_seed(seed)
    net = _network(layers)
    cells = INPUT // STRIDE
    grid = _grid(cells)
    images, boxes = _tensor(scenes)
    classes, targets = _targets(boxes, cells)
    optimiser = torch.optim.Adam(net.parameters(), lr=LEARNING_RATE, weight_decay=1e-5)
    batch = BATCH
    steps = epochs * math.ceil(len(scenes) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=LEARNING_RATE, total_steps=steps, pct_start=0.1)
    order = torch.Generator().manual_seed(seed)
    net.train()
    for epoch in range(epochs):
        torch.set_num_threads(2 if epoch >= second_thread_at else 1)
        for index in torch.randperm(len(scenes), generator=order).split(batch):
            x, cls, box = images[index], classes[index], targets[index]
            if torch.rand(1, generator=order).item() < 0.5:  # a mirrored batch: mirror the targets with it
                x = x.flip(3)
                flipped = cls.reshape(-1, cells, cells).flip(2).reshape(len(index), -1)
                box = box.reshape(-1, 4, cells, cells).flip(3).reshape(len(index), 4, -1).clone()
                box[:, 0] = INPUT - box[:, 0]
                cls = flipped
            raw = net(x)
            out = _decode(raw, grid)  # [B, 4 + C, N]
            logits = raw.reshape(len(index), 4 + len(CLASSES), -1)[:, 4:]
            positive = cls >= 0
            onehot = (torch.arange(len(CLASSES))[None, :, None] == cls[:, None, :]).float()  # background: all 0
            quality = torch.zeros_like(cls, dtype=torch.float32)
            if positive.any():
                pred = out[:, :4].permute(0, 2, 1)[positive]
                true = box.permute(0, 2, 1)[positive]
                giou, iou = _giou_loss(pred, true)
                box_loss = giou.mean() + (pred - true).abs().mean() / STRIDE
                quality[positive] = iou.detach().clamp(min=0.05)
            else:
                box_loss = out.sum() * 0
            # Quality focal loss (GFL's): a positive cell's class score learns the IoU of its own box, so the
            # best-placed box ranks first and NMS keeps it; easy background cells count little.
            target = onehot * quality[:, None, :]
            p = logits.sigmoid()
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
            bce = (bce * (target - p).abs().pow(2)).sum() / max(1, int(positive.sum()))
            loss = bce + 2 * box_loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
    net.eval()
    return net


def export(net, path: Path, model_id: str) -> None:
    """The ONNX file, as Ultralytics names its input, output and metadata (``_describe`` adds the score)."""
    import onnx
    import torch

    grid = _grid(INPUT // STRIDE)

    class Exported(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.register_buffer("grid", grid)

        def forward(self, images):
            return _decode(self.net(images), self.grid)

    module = Exported().eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        module,
        (torch.zeros(1, 3, INPUT, INPUT),),
        str(path),
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},  # the hub batches; a device runs one
        opset_version=OPSET,
        dynamo=False,
    )
    model = onnx.load(str(path))
    meta = {
        "names": str(dict(enumerate(CLASSES))),
        "imgsz": str([INPUT, INPUT]),
        "stride": str(STRIDE),
        "task": "detect",
        "tandem.model_id": model_id,
    }
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "tools.detection_models"
    model.producer_version = "1"
    path.write_bytes(model.SerializeToString())


def _describe(path: Path, model_id: str, held_out_map: float) -> None:
    """The model's held-out score, in its ONNX description (what Netron and ``onnx`` show)."""
    import onnx

    model = onnx.load(str(path))
    model.doc_string = f"tandem {model_id}: synthetic shapes, held-out mAP@0.5 {held_out_map:.3f}"
    path.write_bytes(model.SerializeToString())


# -- evaluation -----------------------------------------------------------------------------------------------


# -- building -------------------------------------------------------------------------------------------------


# (channels, stride) per layer, epochs, and the epoch from which it trains on two threads (build). The light one
# is what a small device affords; the strong one has more channels and more reach at stride 8.
MODELS = {
    "shapes-light": (((8, 2), (16, 2), (16, 1), (32, 2), (32, 1), (32, 1)), 20, 20),
    "shapes-strong": (((16, 2), (32, 2), (32, 1), (64, 2), (64, 1), (64, 1), (64, 1), (64, 1)), 12, 6),
}


def _write_set(folder: Path, scenes: list[Scene]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    written = []
    for i, s in enumerate(scenes):
        name = f"{i:06d}.png"
        cv2.imwrite(str(folder / name), s.image)
        labels[name] = [[round(float(v), 2) for v in b[:4]] + [CLASSES[int(b[4])]] for b in s.boxes]
        written.append(folder / name)
    (folder / "labels.json").write_text(json.dumps(labels, indent=0, sort_keys=True))
    return [*written, folder / "labels.json"]


def _recipe() -> str:
    """What the models depend on: this file and the device's letterbox."""
    source = Path(__file__).read_text() + inspect.getsource(letterbox)
    return hashlib.sha256(source.encode()).hexdigest()


def ensure(out: Path) -> Path:
    """``out`` built by this recipe: kept when its manifest says so, else built afresh (about 3 minutes).

    The build goes to a sibling folder that replaces ``out`` only when complete, so an interrupted build
    never looks finished."""
    manifest = out / "manifest.json"
    if manifest.exists() and json.loads(manifest.read_text()).get("recipe") == _recipe():
        return out
    staging = out.with_name(out.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    build(staging)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return out


def build(out: Path) -> dict[str, object]:
    """Both models trained at once, a process each, then scored here. On 2 cores the light model trains on one
    thread (its small convolutions gain nothing from a second) while the strong one takes the other, and the
    strong one takes both from the epoch by which the light one is done (``MODELS``): about a minute less than
    each on two threads in turn. The switch is at a set epoch, not on a signal, so two builds train alike."""
    import multiprocessing

    from edge.config import DetectorConfig
    from edge.detectors import create_detector

    rng = np.random.default_rng(SEED)
    [scene(rng) for _ in range(TRAIN_SCENES)]  # the training scenes, made again by each trainer from the seed
    held_out = [scene(rng) for _ in range(HELD_OUT_SCENES)]
    calibration = [scene(rng) for _ in range(CALIBRATION_SCENES)]
    files = _write_set(out / "stream", held_out) + _write_set(out / "calibration", calibration)
    manifest: dict[str, object] = {"classes": CLASSES, "models": {}, "recipe": _recipe()}
    # spawn, not fork: a forked child would inherit whatever threads this process has started.
    with multiprocessing.get_context("spawn").Pool(len(MODELS)) as pool:
        trained = pool.map(_train_and_export, [(model_id, out) for model_id in MODELS])
    for model_id, params, trained_s in trained:
        path = out / "models" / f"{model_id}.onnx"
        detector = create_detector(DetectorConfig(kind="detection", model_path=path, conf_threshold=0.01))
        detector.start()
        found = [boxes_array(detector.infer(s.image).boxes, CLASSES) for s in held_out]
        detector.close()
        score = mean_ap(found, [s.boxes for s in held_out])
        _describe(path, model_id, score)
        manifest["models"][model_id] = {  # type: ignore[index]
            "held_out_map50": round(score, 4),
            "parameters": params,
            "train_s": round(trained_s, 1),
        }
        files.append(path)
        print(f"{model_id}: {params} parameters, trained in {trained_s:.0f} s, held-out mAP@0.5 {score:.3f}")
    manifest["sha256"] = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return manifest


def _train_and_export(job: tuple[str, Path]) -> tuple[str, int, float]:
    """In a trainer process: the training scenes from the seed, one model trained, its ONNX file."""
    model_id, out = job
    rng = np.random.default_rng(SEED)
    train_set = [scene(rng) for _ in range(TRAIN_SCENES)]
    layers, epochs, second_thread_at = MODELS[model_id]
    started = time.monotonic()
    net = train(layers, train_set, epochs, SEED, second_thread_at)
    trained_s = time.monotonic() - started
    export(net, out / "models" / f"{model_id}.onnx", model_id)
    return model_id, sum(p.numel() for p in net.parameters()), trained_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path(".tandem/detect"))
    ensure(parser.parse_args(argv).out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
