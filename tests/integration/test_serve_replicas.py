"""Two Ingress replicas under Ray Serve on one PostgreSQL database; one is SIGKILLed mid-load.

``tandem hub run --ingress-replicas 2 --database-url ...``: Serve's gRPC proxy spreads the gRPC device's calls
over both replicas, the broker's shared subscription spreads the MQTT device's escalations. One replica's
worker process is killed while both devices escalate every frame; Serve starts a new one. The books must
balance on both devices: every escalation answered, none lost, none applied twice. What the dead replica held
is claimed by the other once its lease lapses.
"""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import psycopg
import pytest
import yaml

from tests.integration.conftest import HubProcess
from tests.integration.faults.conftest import fault_device, run_with_chaos
from tests.support.report import report
from tests.support.waiting import wait_for

INGRESS = "ServeReplica:tandem:Ingress"


@pytest.fixture
def replicated_hub(demo_assets, mosquitto, hub, pg_url, tmp_path) -> Iterator[HubProcess]:
    hub.stop()  # the session's hub would take the same escalations
    settings = tmp_path / "hub.yaml"
    settings.write_text(
        yaml.safe_dump(
            {
                "mqtt_username": "serve-replicas",
                "database_url": pg_url,
                "ingress_replicas": 2,
                "delivery": {"resend_after_s": 2.0, "max_sends": 60},
            }
        )
    )
    process = HubProcess(
        demo_assets / "models" / "digits-strong.onnx",
        mosquitto.port,
        tmp_path / "hub.db",
        tmp_path / "hub.log",
        extra=("--config", str(settings)),
    )
    process.start()
    yield process
    process.stop()


def ingress_workers(hub: HubProcess) -> list[psutil.Process]:
    found = []
    for process in hub._family():
        try:
            if any(INGRESS in part for part in process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def owners(pg_url: str) -> dict[str, int]:
    with psycopg.connect(pg_url) as conn:
        return dict(conn.execute("SELECT owner, COUNT(*) FROM traces.traces GROUP BY owner").fetchall())


def max_runs(pg_url: str) -> int:
    with psycopg.connect(pg_url) as conn:
        return int(conn.execute("SELECT MAX(COALESCE(runs, 0)) FROM traces.traces").fetchone()[0])


@pytest.mark.slow  # tests/integration/test_ray_cluster.py kills an Ingress replica (with its node) in every run
def test_an_ingress_replica_killed_mid_load_loses_nothing(tmp_path, demo_assets, mosquitto, pg_url, replicated_hub):
    assert len(ingress_workers(replicated_hub)) == 2
    burst = 150
    configs = [
        fault_device(
            tmp_path,
            demo_assets,
            replicated_hub,
            device_id=f"cam-serve-{transport}",
            mqtt_port=mosquitto.port,
            transport=transport,
            fps=60.0,
        )
        for transport in ("grpc", "mqtt")
    ]
    killed: list[int] = []

    def kill_one() -> None:
        wait_for(lambda: len(owners(pg_url)) == 2, 10, "both replicas to take escalations")
        victim = ingress_workers(replicated_hub)[0]
        killed.append(victim.pid)
        victim.kill()

    books, chaos = run_with_chaos(configs, burst, [(1.0, "SIGKILL of one Ingress replica", kill_one)], 180)
    # Serve replaced the dead replica.
    wait_for(lambda: len(ingress_workers(replicated_hub)) == 2, 60, "Serve to start a new Ingress replica")
    assert killed[0] not in {p.pid for p in ingress_workers(replicated_hub)}
    took = owners(pg_url)
    report(
        "an Ingress replica SIGKILLed mid-load (2 replicas, PostgreSQL)",
        "; ".join(chaos.done),
        {
            **{f"{c.device_id} {k}": v for c, b in zip(configs, books, strict=True) for k, v in b.figures().items()},
            "replicas that ran traces": len(took),
            "most model runs of one trace": max_runs(pg_url),
        },
    )
    for config, device in zip(configs, books, strict=True):
        assert device.integrity == "ok" and device.escalated == burst, config.device_id
        assert device.lost == [] and device.applied_twice == [] and device.dropped == 0, config.device_id
        assert device.verdicts + device.late_verdicts + device.failed_results == device.escalated, config.device_id
    assert len(took) >= 2
    assert max_runs(pg_url) <= 2  # a trace the dead replica was running runs once more, elsewhere
