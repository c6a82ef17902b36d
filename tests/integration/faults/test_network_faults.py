"""Network faults on each link, with a proxy in the way: device to hub (gRPC), device to broker (MQTT), and hub
to broker. On each link, in turn: a blackhole, connection resets every second, 2 s of added round-trip latency,
and a bandwidth cap. Afterwards every escalation has exactly one verdict (in time, or late after its fallback),
the backlog has drained, and the frame loop kept its rate within 10% while each fault lasted."""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from pathlib import Path

import grpc
import pytest

from edge.app import EdgeRuntime
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from tandem.broker import free_port
from tests.integration.faults.conftest import drained, fault_device
from tests.support.ledger import hub_runs
from tests.support.report import report
from tests.support.tcp_proxy import FaultProxy

FPS = 10.0
BASELINE_S = 3.0
FAULT_S = 4.0
GAP_S = 1.5  # clean air between faults
FAULTS = {
    "blackhole": lambda p: p.blackhole(),
    "resets every 1 s": lambda p: p.reset_every(1.0),
    "2 s round-trip latency": lambda p: p.latency(1.0),  # each way
    "5 kB/s": lambda p: p.throttle(5000),
}


def frame_rate(store: Path, since: float, until: float) -> float:
    with sqlite3.connect(f"file:{store}?mode=ro", uri=True) as conn:
        query = "SELECT COUNT(*) FROM traces WHERE created_at >= ? AND created_at < ?"
        (count,) = conn.execute(query, (since, until)).fetchone()
    return count / (until - since)


@pytest.mark.parametrize("link", ["device-hub", "device-broker", "hub-broker"])
def test_faults_on_a_link_lose_nothing_and_do_not_slow_the_frame_loop(
    link, tmp_path, demo_assets, fault_hub, mosquitto, broker_link
):
    fault_hub.start()
    device_id = f"cam-net-{link}"
    own = FaultProxy(free_port(), fault_hub.grpc_port if link == "device-hub" else mosquitto.port)
    proxy = {"device-hub": own, "device-broker": own, "hub-broker": broker_link}[link]
    config = fault_device(
        tmp_path,
        demo_assets,
        fault_hub,
        device_id=device_id,
        mqtt_port=own.port if link == "device-broker" else mosquitto.port,
        transport="grpc" if link == "device-hub" else "mqtt",
        grpc_port=own.port if link == "device-hub" else None,
        fps=FPS,
    )
    windows: list[tuple[str, float, float]] = []

    def script() -> None:
        time.sleep(BASELINE_S)
        for name, inject in FAULTS.items():
            start = time.time()
            inject(proxy)
            time.sleep(FAULT_S)
            proxy.heal()
            windows.append((name, start, time.time()))
            time.sleep(GAP_S)

    frames = int(FPS * (BASELINE_S + len(FAULTS) * (FAULT_S + GAP_S) + 1))
    chaos = threading.Thread(target=script, daemon=True)
    try:
        with EdgeRuntime(config) as runtime:
            began = time.time()
            chaos.start()
            runtime.run(max_frames=frames)
            chaos.join(60)
            books = drained(config.state_path, 120)
    finally:
        proxy.heal()
        own.close()

    baseline = frame_rate(config.state_path, began + 0.5, began + BASELINE_S)
    rates = {name: frame_rate(config.state_path, start, end) for name, start, end in windows}
    runs = hub_runs(fault_hub.store, device_id)
    report(
        f"network faults on {link}",
        f"{', '.join(FAULTS)} ({FAULT_S:g} s each; proxy: {proxy.counts['resets']} resets so far)",
        {
            **books.figures(),
            "frames/s baseline": round(baseline, 2),
            **{f"frames/s under {name}": round(rate, 2) for name, rate in rates.items()},
            "max model runs per trace": max(runs.values()),
        },
    )
    assert books.integrity == "ok"
    assert books.escalated == frames
    assert books.lost == [] and books.applied_twice == [] and books.dropped == 0
    assert books.verdicts + books.late_verdicts == books.escalated
    assert max(runs.values()) == 1  # resends are duplicates to the hub, never a second model run
    for name, rate in rates.items():
        assert rate >= 0.9 * baseline, f"the frame loop slowed under {name}: {rate:.2f} vs {baseline:.2f} frames/s"


def test_callers_that_go_away_mid_call_leave_no_trace_unanswered(fault_hub, demo_assets):
    """Devices whose calls end early (a deadline, a killed process) while the hub is working on them: every trace
    the hub accepted still runs to its result. (Ray Serve cancels a request's model calls when its client goes
    away; the hub runs each trace in a context of its own, so that cannot end the run half-way.)"""
    fault_hub.start()
    device_id = "cam-hangup"
    images = [p.read_bytes() for p in sorted((demo_assets / "stream" / "images").iterdir())[:40]]
    labels = tuple(str(d) for d in range(10))
    cut_short = []

    def caller(seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(f"127.0.0.1:{fault_hub.grpc_port}") as channel:
            for image in images:
                method = rng.choice(["Escalate", "EscalateAndWait"])
                request = EscalationRequest(
                    new_trace_id(),
                    device_id,
                    Prediction("weak", "1", labels, (0.1,) * 10),
                    EncodedImage("image/png", image, 8, 8),
                    deadline_ms=2000,
                )
                try:
                    channel.unary_unary(f"/tandem.v1.Escalation/{method}")(
                        request.to_proto().SerializeToString(),
                        timeout=rng.uniform(0.005, 0.05),
                        metadata=(("application", "tandem"),),
                    )
                except grpc.RpcError as error:
                    cut_short.append(error.code())

    threads = [threading.Thread(target=caller, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    def statuses() -> dict[str, int]:
        with sqlite3.connect(f"file:{fault_hub.store}?mode=ro", uri=True) as conn:
            rows = conn.execute("SELECT status, COUNT(*) FROM traces WHERE device_id = ? GROUP BY status", (device_id,))
            return dict(rows.fetchall())

    end = time.monotonic() + 20  # well before the hub's own sweep for orphaned runs (every 30 s) could help
    while set(statuses()) - {"SUCCESS"} and time.monotonic() < end:
        time.sleep(0.5)
    found = statuses()
    report(
        "callers going away mid-call",
        f"{len(threads) * len(images)} calls with 5-50 ms deadlines, {len(cut_short)} cut short by the caller",
        {"accepted traces": sum(found.values()), **{f"ended {k}": v for k, v in found.items()}},
    )
    assert cut_short, "no call was cut short; the test needs shorter deadlines"
    assert set(found) == {"SUCCESS"}, found
