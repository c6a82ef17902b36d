import json

from tools.demo_models import build


def test_models_are_byte_identical_between_runs(tmp_path, demo_assets):
    build(tmp_path / "again")
    first = json.loads((demo_assets / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "manifest.json").read_text())
    assert first["files"] == second["files"]
    for name in ("models/digits-weak.onnx", "models/digits-strong.onnx"):
        assert (demo_assets / name).read_bytes() == (tmp_path / "again" / name).read_bytes()


def test_strong_model_beats_weak_on_held_out_data(demo_assets):
    models = json.loads((demo_assets / "manifest.json").read_text())["models"]
    assert models["digits-strong"]["held_out_accuracy"] > models["digits-weak"]["held_out_accuracy"]
    labels = (demo_assets / "stream" / "labels.csv").read_text().splitlines()
    assert (
        labels[0] == "frame,file,label"
        and len(labels) - 1 == json.loads((demo_assets / "manifest.json").read_text())["held_out"]
    )
