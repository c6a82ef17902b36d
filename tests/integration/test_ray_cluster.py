"""The hub on a real two-node Ray cluster, deployed with ``serve deploy deploy/cloud/serve.yaml``; the worker
node is killed mid-load.

The head node (``ray start --head``) and a worker (``ray start --address``) run on this machine as separate
process families. The shipped serve.yaml is deployed with only what this machine needs changed: ports, the
test's PostgreSQL and broker, and the proxies on the head only (one machine cannot give two nodes' proxies the
same ports). Two Ingress and two ModelPool replicas, at most one of each per node, so the worker holds one of
each. It is killed (SIGKILL to every process of it) while a gRPC device and an MQTT device escalate every
frame: both devices' books must balance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from tandem.broker import free_port
from tests.integration.faults.conftest import fault_device, run_with_chaos
from tests.support.ray_cluster import RayCluster
from tests.support.report import report
from tests.support.waiting import wait_for

SERVE_YAML = Path(__file__).resolve().parents[2] / "deploy" / "cloud" / "serve.yaml"


class ClusterHub:
    """What fault_device needs of a hub: its gRPC port."""

    def __init__(self, grpc_port: int, http_port: int) -> None:
        self.grpc_port = grpc_port
        self.http_port = http_port


def cluster_config(shipped: Path, out: Path, *, grpc_port: int, http_port: int, args: dict) -> Path:
    """The shipped serve.yaml with this machine's ports, stores and broker, and replicas spread over nodes."""
    config = yaml.safe_load(shipped.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    config["grpc_options"]["port"] = grpc_port
    app = config["applications"][0]
    app["args"].update(args)
    for deployment in app["deployments"]:
        deployment["max_replicas_per_node"] = 1
        deployment.pop("autoscaling_config", None)
        deployment["num_replicas"] = 2
    out.write_text(yaml.safe_dump(config))
    return out


@pytest.fixture
def cluster(tmp_path) -> Iterator[RayCluster]:
    work = tmp_path / "ray"
    work.mkdir()
    cluster = RayCluster(work)
    try:
        cluster.start()
        cluster.add_worker("worker_node")
        yield cluster
    finally:
        cluster.stop()


def test_the_hub_on_two_nodes_loses_nothing_when_the_worker_node_dies(
    tmp_path, demo_assets, mosquitto, hub, pg_url, cluster
):
    hub.stop()  # the session's hub would take the same escalations
    grpc_port, http_port = free_port(), free_port()
    config = cluster_config(
        SERVE_YAML,
        tmp_path / "serve.yaml",
        grpc_port=grpc_port,
        http_port=http_port,
        args={
            "model_path": str(demo_assets / "models" / "digits-strong.onnx"),
            "trace_store_path": str(tmp_path / "unused.db"),
            "artifacts_path": str(tmp_path / "artifacts"),
            "database_url": pg_url,
            "ingress_replicas": 2,
            "mqtt_port": mosquitto.port,
            "mqtt_username": "cluster-hub",
            "delivery": {"resend_after_s": 2.0, "max_sends": 60},
        },
    )
    cluster.deploy(config)
    wait_for(lambda: _replicas_running(cluster) == {"Ingress": 2, "ModelPool": 2}, 180, "two replicas of each")
    wait_for(lambda: _healthy(http_port), 60, "the hub's HTTP API")
    assert cluster.alive_nodes() == 2
    hub_like = ClusterHub(grpc_port, http_port)
    burst = 90
    configs = [
        fault_device(
            tmp_path,
            demo_assets,
            hub_like,
            device_id=f"cam-cluster-{transport}-{i}",
            mqtt_port=mosquitto.port,
            transport=transport,
            fps=30.0,
        )
        for i, transport in enumerate(("grpc", "mqtt", "grpc", "mqtt"))
    ]
    worker = cluster.nodes[1]
    before_kill: dict[str, int] = {}

    def kill_worker() -> None:
        before_kill.update(_owners(pg_url))  # who had taken escalations by then
        worker.kill()

    steps = [(1.5, "SIGKILL of the worker node (raylet, workers, agents)", kill_worker)]
    books, chaos = run_with_chaos(configs, burst, steps, 240)
    with psycopg.connect(pg_url) as conn:
        most_runs = conn.execute("SELECT MAX(COALESCE(runs, 0)) FROM traces.traces").fetchone()[0]
        failures = dict(
            conn.execute(
                "SELECT COALESCE(error, status), COUNT(*) FROM traces.traces WHERE status <> 'SUCCESS' GROUP BY 1"
            ).fetchall()
        )
    report(
        "the worker node of a two-node Ray cluster SIGKILLed mid-load",
        "; ".join(chaos.done),
        {
            **{f"{c.device_id} {k}": v for c, b in zip(configs, books, strict=True) for k, v in b.figures().items()},
            "Ingress replicas that had taken escalations when the node died": len(before_kill),
            "most model runs of one trace": most_runs,
            "hub failures by reason": failures,
        },
    )
    for c, device in zip(configs, books, strict=True):
        assert device.integrity == "ok" and device.escalated == burst, c.device_id
        assert device.lost == [] and device.applied_twice == [] and device.dropped == 0, c.device_id
        assert device.verdicts + device.late_verdicts + device.failed_results == device.escalated, c.device_id
    # A call the dead node's replica held hangs until Ray declares the node dead (about 3 s with this cluster's
    # health checks) and then times out at the step's deadline: TIMED_OUT, an answer, and the device keeps its
    # own. How many depends on how much of the 3 s burst falls in that window: 66, 108 and 256 of 360 were seen
    # here, so it is reported, not bounded. What must hold is that the hub recovers: once Serve has the dead
    # node's replicas off its books, every escalation is answered again.
    assert len(before_kill) == 2  # both nodes' Ingress replicas were taking escalations when one node died
    assert most_runs <= 2
    wait_for(lambda: _replicas_running(cluster) == {"Ingress": 1, "ModelPool": 1}, 120, "the dead node's replicas gone")
    after = [
        config.model_copy(update={"device_id": config.device_id.replace("cluster", "after"),
                                  "state_path": config.state_path.with_name(f"after-{config.state_path.name}")})
        for config in configs
    ]  # fmt: skip
    books_after, _ = run_with_chaos(after, 30, [], 120)
    for c, device in zip(after, books_after, strict=True):
        assert device.lost == [] and device.failed_results == 0, c.device_id
        assert device.verdicts + device.late_verdicts == device.escalated, c.device_id  # each answered by the hub


def _owners(pg_url: str) -> dict[str, int]:
    with psycopg.connect(pg_url) as conn:
        return dict(conn.execute("SELECT owner, COUNT(*) FROM traces.traces GROUP BY owner").fetchall())


def _replicas_running(cluster: RayCluster) -> dict[str, int]:
    """RUNNING replicas per deployment of the app, from ``serve status``."""
    status = yaml.safe_load(cluster.serve_status() or "{}") or {}
    deployments = (status.get("applications") or {}).get("tandem", {}).get("deployments", {})
    return {name: d.get("replica_states", {}).get("RUNNING", 0) for name, d in deployments.items()}


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
