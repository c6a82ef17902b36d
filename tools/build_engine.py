"""Build a TensorRT engine from an ONNX model with ``trtexec``, on the device that will run it.

    python -m tools.build_engine MODEL.onnx [--fp16] [--int8 --calib CALIB_DIR] [--batch 1:4:8]
                                 [--cache /var/lib/tandem/engines] [--trtexec PATH]

An engine only runs on the GPU and the TensorRT version it was built with, so
engines are cached under a key of the model's sha256, the precision flags and
the TensorRT/JetPack version (``/etc/nv_tegra_release`` on a Jetson). A second
build with the same key is a cache hit and returns at once.

INT8 needs calibration data: a folder of ``.npy`` tensors in the model's input
layout, given to trtexec as ``--calib``'s cache or, for trtexec builds that take
it, as ``--loadInputs``; without one trtexec would calibrate on random data,
which this tool refuses.

Next to the engine goes ``<engine>.json``: the model's ``tandem.*`` metadata
(id, version, labels), which an engine file cannot carry, for the tensorrt
backend to read. trtexec's output is shown as a progress line while it runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from common.inference.model_info import read_model_info, sidecar

PHASES = (
    (re.compile(r"Parsing|ONNX"), "parsing the model"),
    (re.compile(r"Calibrat"), "calibrating INT8"),
    (re.compile(r"[Tt]actic|Autotun|timing"), "choosing kernels"),
    (re.compile(r"Engine built|Serializ|Saved"), "writing the engine"),
    (re.compile(r"Throughput|Latency|GPU Compute"), "timing the engine"),
)


@dataclass(frozen=True)
class Build:
    model: Path
    fp16: bool = False
    int8: bool = False
    calib: Optional[Path] = None
    shapes: Optional[str] = None
    """min:opt:max batch sizes for a dynamic batch dimension, e.g. 1:4:8."""


def platform_version(trtexec: str) -> str:
    """TensorRT's version (from trtexec) and, on a Jetson, the L4T release: what an engine is tied to."""
    parts = []
    try:
        out = subprocess.run([trtexec, "--help"], capture_output=True, text=True, timeout=60, check=False)
        match = re.search(r"TensorRT\.trtexec \[TensorRT v(\d+)\]|TensorRT v(\d+)", out.stdout + out.stderr)
        if match:
            parts.append("trt" + (match.group(1) or match.group(2)))
    except (OSError, subprocess.TimeoutExpired):
        pass
    tegra = Path("/etc/nv_tegra_release")
    if tegra.exists():
        parts.append(re.sub(r"\W+", "_", tegra.read_text().splitlines()[0])[:40])
    return "-".join(parts) or "unknown"


def cache_key(build: Build, version: str) -> str:
    digest = hashlib.sha256(build.model.read_bytes()).hexdigest()[:16]
    precision = "int8" if build.int8 else "fp16" if build.fp16 else "fp32"
    shapes = build.shapes.replace(":", "-") if build.shapes else "static"
    return f"{build.model.stem}-{digest}-{precision}-{shapes}-{version}"


def command(trtexec: str, build: Build, engine: Path, input_name: str, dims: str) -> list[str]:
    """trtexec's command line; ``dims`` is the input's shape after the batch dimension, e.g. 1x8x8."""
    cmd = [trtexec, f"--onnx={build.model}", f"--saveEngine={engine}"]
    if build.fp16:
        cmd.append("--fp16")
    if build.int8:
        if build.calib is None:
            raise SystemExit("--int8 needs --calib: calibrating on random data gives a useless engine")
        cmd += ["--int8", f"--calib={build.calib}"]
    if build.shapes:
        low, opt, high = build.shapes.split(":")
        cmd += [
            f"--minShapes={input_name}:{low}x{dims}",
            f"--optShapes={input_name}:{opt}x{dims}",
            f"--maxShapes={input_name}:{high}x{dims}",
        ]
    return cmd


def _progress(line: str, state: dict[str, str]) -> None:
    for pattern, phase in PHASES:
        if pattern.search(line) and state.get("phase") != phase:
            state["phase"] = phase
            print(f"\r  trtexec: {phase}...".ljust(60), end="", file=sys.stderr, flush=True)


def build_engine(build: Build, cache: Path, trtexec: str) -> Path:
    version = platform_version(trtexec)
    engine = cache / f"{cache_key(build, version)}.engine"
    if engine.exists() and sidecar(engine).exists():
        print(f"cached: {engine}", file=sys.stderr)
        return engine
    cache.mkdir(parents=True, exist_ok=True)
    info = read_model_info(build.model)
    from common.inference.onnx import OrtRunner

    runner = OrtRunner(build.model)
    dims = "x".join(str(d) for d in runner.input_shape[1:])
    partial = engine.with_suffix(".partial")
    cmd = command(trtexec, build, partial, runner.input_name, dims)
    print("  " + " ".join(cmd), file=sys.stderr)
    state: dict[str, str] = {}
    log = engine.with_suffix(".log")
    with (
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process,
        log.open("w") as sink,
    ):
        for line in process.stdout or ():
            sink.write(line)
            _progress(line, state)
    print(file=sys.stderr)
    if process.returncode != 0 or not partial.exists():
        raise SystemExit(f"trtexec failed (exit {process.returncode}); its output is in {log}")
    partial.replace(engine)  # only a finished engine ever has the cache's name
    sidecar(engine).write_text(
        json.dumps(
            {
                "tandem.model_id": info.model_id,
                "tandem.model_version": info.version,
                "tandem.labels": json.dumps(list(info.labels)),
                "source_sha256": hashlib.sha256(build.model.read_bytes()).hexdigest(),
                "platform": version,
            },
            indent=2,
        )
        + "\n"
    )
    return engine


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or find in the cache) a TensorRT engine for an ONNX model.")
    parser.add_argument("model", type=Path)
    parser.add_argument("--fp16", action="store_true", help="allow FP16 kernels")
    parser.add_argument("--int8", action="store_true", help="allow INT8 kernels (needs --calib)")
    parser.add_argument("--calib", type=Path, help="INT8 calibration cache or data for trtexec --calib")
    parser.add_argument("--batch", dest="shapes", help="min:opt:max batch for a dynamic batch dimension, e.g. 1:4:8")
    parser.add_argument("--cache", type=Path, default=Path("/var/lib/tandem/engines"), help="the engine cache")
    parser.add_argument("--trtexec", default=None, help="trtexec to run (default: PATH, then /usr/src/tensorrt/bin)")
    args = parser.parse_args(argv)
    trtexec = args.trtexec or shutil.which("trtexec") or "/usr/src/tensorrt/bin/trtexec"
    if not Path(trtexec).exists() and shutil.which(trtexec) is None:
        print(f"build_engine: no trtexec at {trtexec} (it comes with TensorRT; on a Jetson, JetPack)", file=sys.stderr)
        return 2
    engine = build_engine(Build(args.model, args.fp16, args.int8, args.calib, args.shapes), args.cache, trtexec)
    print(engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
