"""`tandem demo --secure --json`: the whole demo over TLS, on Ray Serve, with the device enrolled through the
hub's HTTPS admin API; every escalation gets its verdict."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_the_secure_demo_answers_every_escalation_over_tls(demo_assets):
    tandem = Path(sys.executable).with_name("tandem")
    done = subprocess.run(
        [
            str(tandem),
            "demo",
            "--models",
            str(demo_assets),
            "--secure",
            "--json",
            "--frames",
            "240",
            "--orchestrator",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["escalated"] > 0
    assert summary["verdicts"] == summary["escalated"] and summary["unresolved"] == 0 and summary["fallbacks"] == 0
    assert summary["tls"]["identity"] == "CN=demo-cam-1"
    assert "client certificate" in summary["tls"]["escalations"] and "over TLS" in summary["tls"]["verdicts"]
