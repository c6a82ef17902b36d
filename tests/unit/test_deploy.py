"""The Jetson deployment files: the systemd unit passes systemd's own checks, the example config validates."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.config import load_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "jetson"


def test_example_config_validates():
    config = load_config(DEPLOY / "edge.example.yaml")
    assert config.device_id and config.service.http_port


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (no systemd on this machine)")
    # The unit points at /opt/tandem; point it at this venv's tandem so the executable check passes.
    unit = (
        (DEPLOY / "tandem-edge.service")
        .read_text()
        .replace("/opt/tandem/venv/bin/tandem", str(Path(sys.executable).parent / "tandem"))
    )
    path = tmp_path / "tandem-edge.service"
    path.write_text(unit)
    result = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, check=False)
    problems = [line for line in (result.stdout + result.stderr).splitlines() if "tandem-edge.service" in line]
    assert problems == [], problems
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "Restart=on-failure" in unit


def test_install_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(DEPLOY / "install.sh")], check=True)
