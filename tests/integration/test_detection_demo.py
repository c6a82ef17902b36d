"""`tandem demo --workload detection --json --stay`: two cameras on one device, the box judge calibrated with the
hub's strong detector, JPEG crops escalated to Ray Serve; every escalation gets its verdict. The demo prints the
fleet console's address, and the console, served through Serve's HTTP proxy, shows the demo's device live and
its escalations with their boxes."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.support.browser import chromium, screenshot

DEVICE = "demo-cam-1"  # tandem.demo.DEVICE_ID


def test_the_detection_demo_answers_every_escalation_and_its_console_shows_it_live(detect_models):
    tandem = Path(sys.executable).with_name("tandem")
    command = [str(tandem), "demo", "--workload", "detection", "--detect-models", str(detect_models), "--json"]
    demo = subprocess.Popen(
        [*command, "--frames", "120", "--orchestrator", "off", "--stay"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    stderr: list[str] = []
    readers = [
        threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: stderr.extend(demo.stderr), daemon=True),  # type: ignore[arg-type]
    ]
    for reader in readers:
        reader.start()
    out: list[str] = []

    def until(prefix: str, timeout_s: float) -> str:
        while True:
            try:
                line = lines.get(timeout=timeout_s)
            except queue.Empty as exc:
                why = f"no line starting {prefix!r}; stdout {out}, stderr {''.join(stderr)[-3000:]}"
                raise AssertionError(why) from exc
            out.append(line)
            if line.startswith(prefix):
                return line

    try:
        console = until("console: ", 300).split()[1]
        until("demo: the stream has ended", 300)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(30_000)
            page.goto(console)  # the demo's admin API is open: no login
            page.wait_for_selector("#live:has-text('live')")  # the event stream through Serve's proxy
            page.wait_for_function(
                f"() => document.querySelector(\"tr[data-device='{DEVICE}'] td.status\")?.textContent === 'online'"
            )
            cameras = page.inner_text(f"tr[data-device='{DEVICE}'] td:nth-child(11)")
            assert "cam-a" in cameras and "cam-b" in cameras  # frames/s per camera
            screenshot(page, "console-demo-fleet")
            page.goto(f"{console}#/traces?device_id={DEVICE}")
            page.wait_for_selector("#trace-search")  # the Traces view, not the Fleet table it replaces
            page.click("#main table tbody tr:first-child a[href^='#/traces/']")
            page.wait_for_function("() => document.querySelector('#trace-image')?.naturalWidth > 0")
            screenshot(page, "console-demo-trace")
    finally:
        demo.send_signal(signal.SIGINT)  # --stay: Ctrl-C ends it
        try:
            demo.wait(120)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
        finally:
            for reader in readers:
                reader.join(10)
            demo.stdout.close()  # type: ignore[union-attr]
            demo.stderr.close()  # type: ignore[union-attr]
    while not lines.empty():
        out.append(lines.get())
    assert demo.returncode == 0, "".join(stderr)[-3000:]
    summary = json.loads(out[-1])
    assert summary["workload"] == "detection" and summary["frames"] == 120
    by_camera = summary["frames_by_camera"]
    assert set(by_camera) == {"cam-a", "cam-b"} and min(by_camera.values()) > 0  # one device, two cameras
    assert sum(by_camera.values()) == 120
    assert summary["escalated"] > 0 and summary["escalation_bytes_mean"] > 0
    assert summary["verdicts"] == summary["escalated"] and summary["unresolved"] == 0 and summary["fallbacks"] == 0
    assert 0 < summary["box_floor"] < summary["box_threshold"] < 1  # calibrated, not the defaults
