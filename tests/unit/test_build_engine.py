"""tools/build_engine: the trtexec command, the cache key, the sidecar metadata, and a cache hit.

trtexec itself needs TensorRT and a GPU. Here a stand-in trtexec (a script that
prints trtexec-like progress and writes the --saveEngine file) drives the tool;
the real build is checked on a GPU machine.
"""

import json
import stat

import pytest

from tools.build_engine import Build, build_engine, cache_key, command

FAKE_TRTEXEC = """#!/bin/sh
if [ "$1" = "--help" ]; then echo "&&&& RUNNING TensorRT.trtexec [TensorRT v100300]"; exit 0; fi
echo "[I] Parsing ONNX"; echo "[I] Autotuner: timing tactics"; echo "[I] Engine built in 1 s"
for arg in "$@"; do case "$arg" in --saveEngine=*) printf 'engine' > "${arg#--saveEngine=}";; esac; done
echo "$@" >> "$(dirname "$0")/calls"
"""


@pytest.fixture
def trtexec(tmp_path):
    path = tmp_path / "trtexec"
    path.write_text(FAKE_TRTEXEC)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_command_carries_precision_and_dynamic_batch(demo_assets, tmp_path):
    model = demo_assets / "models" / "digits-weak.onnx"
    cmd = command("trtexec", Build(model, fp16=True, shapes="1:4:8"), tmp_path / "e.engine", "image", "1x8x8")
    assert "--fp16" in cmd and "--minShapes=image:1x1x8x8" in cmd and "--maxShapes=image:8x1x8x8" in cmd
    with pytest.raises(SystemExit, match="needs --calib"):
        command("trtexec", Build(model, int8=True), tmp_path / "e.engine", "image", "1x8x8")


def test_cache_key_changes_with_model_precision_and_platform(demo_assets):
    weak, strong = demo_assets / "models" / "digits-weak.onnx", demo_assets / "models" / "digits-strong.onnx"
    keys = {
        cache_key(Build(weak), "trt100300"),
        cache_key(Build(weak, fp16=True), "trt100300"),
        cache_key(Build(strong), "trt100300"),
        cache_key(Build(weak), "trt100400"),
    }
    assert len(keys) == 4


def test_build_writes_engine_and_metadata_then_hits_the_cache(demo_assets, tmp_path, trtexec):
    model = demo_assets / "models" / "digits-weak.onnx"
    engine = build_engine(Build(model, fp16=True), tmp_path / "cache", str(trtexec))
    assert engine.read_bytes() == b"engine" and "trt100300" in engine.name and "fp16" in engine.name
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert meta["tandem.model_id"] == "digits-weak" and json.loads(meta["tandem.labels"])[0] == "0"
    again = build_engine(Build(model, fp16=True), tmp_path / "cache", str(trtexec))
    assert again == engine
    assert len((tmp_path / "calls").read_text().splitlines()) == 1  # the second build was a cache hit
