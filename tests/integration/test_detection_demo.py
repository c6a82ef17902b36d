"""`tandem demo --workload detection --json`: two cameras on one device, the box judge calibrated with the hub's
strong detector, JPEG crops escalated to Ray Serve; every escalation gets its verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_detection_demo_answers_every_escalation(detect_models):
    tandem = Path(sys.executable).with_name("tandem")
    command = [str(tandem), "demo", "--workload", "detection", "--detect-models", str(detect_models), "--json"]
    done = subprocess.run(
        [*command, "--frames", "120", "--orchestrator", "off"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["workload"] == "detection" and summary["frames"] == 120
    by_camera = summary["frames_by_camera"]
    assert set(by_camera) == {"cam-a", "cam-b"} and min(by_camera.values()) > 0  # one device, two cameras
    assert sum(by_camera.values()) == 120
    assert summary["escalated"] > 0 and summary["escalation_bytes_mean"] > 0
    assert summary["verdicts"] == summary["escalated"] and summary["unresolved"] == 0 and summary["fallbacks"] == 0
    assert 0 < summary["box_floor"] < summary["box_threshold"] < 1  # calibrated, not the defaults
