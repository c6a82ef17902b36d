import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import ConfigError
from edge.config import load_config

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "jetson" / "edge.example.yaml"


def test_example_config_is_valid():
    config = load_config(EXAMPLE)
    assert config.device_id == "jetson-dock-07" and config.outbox.synchronous == "FULL"


@pytest.mark.parametrize(
    ("change", "names"),
    [
        ("judge:\n  confidence_threshold: 1.5\n", "judge.confidence_threshold"),
        ("judge:\n  confidence_treshold: 0.5\n", "judge.confidence_treshold: Extra inputs are not permitted"),
        ("device_id: 'cam/1'\n", "device_id"),
    ],
)
def test_bad_field_is_named(tmp_path, change, names):
    text = EXAMPLE.read_text()
    key = change.split(":")[0]
    kept = [line for line in text.splitlines() if not line.startswith(key + ":")]
    if key == "judge":
        kept = [line for line in kept if "confidence_threshold" not in line]
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join(kept) + "\n" + change)
    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        load_config(bad)


def test_check_config_command_reports_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: cam-1\nsource: {kind: video}\n")
    out = subprocess.run(
        [sys.executable, "-m", "tandem.cli", "edge", "check-config", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 2
    assert "detector: Field required" in out.stderr


def test_a_secured_device_refuses_mqtt_sensors_with_the_reason(tmp_path):
    text = EXAMPLE.read_text().replace("kind: serial\n    port: /dev/ttyUSB0", "kind: mqtt\n    topic: site/door")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=r"sensors \['door'\] read the device's broker in plain MQTT"):
        load_config(bad)
    plain = tmp_path / "plain.yaml"  # the same sensor on a device without tls is fine
    plain.write_text(
        "\n".join(
            line
            for line in text.splitlines()
            if not line.startswith(("tls:", "  ca_path", "  cert_path", "  key_path"))
        )
    )
    assert load_config(plain).sensors[0].kind == "mqtt"
