"""``tools/bench fleet``: a simulated fleet (``tools.fleet_sim``) against one hub (``tandem hub run``: Ray Serve,
the demo's strong model, the cache off so every escalation runs it) and a real Mosquitto.

For each fleet size (``--devices 50,100,200,500``), every device escalates a 640x480 JPEG every ``--period``
seconds for ``--seconds`` (after a 10 s warm-up): what the hub sustains (answered escalations/s against
offered), the round trip from the device's send to the result on its results topic (p50/p99), FAILED
results, losses (no result 180 s after the run), and the hub's memory: the resident set of the hub process
and every process it started (Ray's workers included), sampled each second, ``hub_rss_growth`` being the
mean of the run's last fifth over the mean of its first fifth.

The goal on this 2-core machine: 200 devices at one escalation every 2 s for 5 minutes (``--devices 200
--seconds 300``) with 0 lost, p99 <= 500 ms and the hub's memory not growing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import psutil
import yaml

from tandem.broker import MosquittoBroker, free_port
from tools.fleet_sim import FleetRun, raise_file_limit, run_fleet

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / ".tandem" / "demo"
GOAL = {"devices": 200, "p99_ms": 500.0, "lost": 0, "hub_rss_growth": 1.05}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="end with the figures as one JSON line")
    parser.add_argument("--devices", default="50,100,200,500", help="fleet sizes, comma-separated")
    parser.add_argument("--period", type=float, default=2.0, help="seconds between one device's escalations")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per fleet size")
    parser.add_argument("--grpc-every", type=int, default=4, help="every Nth device escalates over gRPC")
    parser.add_argument("--database-url", help="run the hub on PostgreSQL (default: its SQLite files)")
    parser.add_argument("--ingress-replicas", type=int, default=1)
    parser.add_argument(
        "--model-pool", choices=["serve", "ingress"], default="serve", help="the hub's model_pool (see README)"
    )


class HubUnderTest:
    """``tandem hub run`` in a child process; ``rss_mb()`` sums its process family's resident memory."""

    def __init__(
        self, work: Path, mqtt_port: int, database_url: Optional[str], replicas: int, model_pool: str = "serve"
    ) -> None:
        routing = work / "routing.yaml"
        routing.write_text(
            yaml.safe_dump(
                {
                    "models": {"strong": {"path": str(DEMO / "models" / "digits-strong.onnx")}},
                    "routes": [{"name": "default", "steps": [{"model": "strong"}]}],
                    "cache": {"enabled": False},
                }
            )
        )
        settings: dict[str, object] = {
            "routing_path": str(routing),
            "trace_store_path": str(work / "hub.db"),
            "mqtt_port": mqtt_port,
            "http_port": free_port(),
            "grpc_port": free_port(),
            "ingress_replicas": replicas,
            "model_pool": model_pool,
        }
        if database_url:
            settings["database_url"] = database_url
        config = work / "hub.yaml"
        config.write_text(yaml.safe_dump(settings))
        self.grpc_port = int(settings["grpc_port"])  # type: ignore[call-overload]
        self._log = (work / "hub.log").open("w")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tandem.cli", "hub", "run", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            start_new_session=True,
        )
        assert self._process.stdout is not None
        for line in self._process.stdout:
            if line.startswith("hub ready"):
                break
        else:
            raise RuntimeError(f"the hub did not start: see {work / 'hub.log'}")
        threading.Thread(target=self._process.stdout.read, daemon=True).start()

    def rss_mb(self) -> float:
        try:
            root = psutil.Process(self._process.pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0
        for process in family:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total / 1e6

    def stop(self) -> None:
        root = psutil.Process(self._process.pid)
        family = [root, *root.children(recursive=True)]
        self._process.terminate()
        try:
            self._process.wait(60)
        except subprocess.TimeoutExpired:
            self._process.kill()
        for process in family:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        self._log.close()


class MemorySampler:
    def __init__(self, hub: HubUnderTest, every_s: float = 1.0) -> None:
        self.samples: list[float] = []
        self._hub = hub
        self._every = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            self.samples.append(self._hub.rss_mb())

    def stop(self) -> list[float]:
        self._stop.set()
        self._thread.join(5)
        return self.samples


def growth(samples: list[float]) -> float:
    """The mean of the last fifth of the samples over the mean of the first fifth."""
    if len(samples) < 10:
        return 1.0
    fifth = len(samples) // 5
    first, last = samples[:fifth], samples[-fifth:]
    return (sum(last) / len(last)) / (sum(first) / len(first))


def run(args: argparse.Namespace) -> int:
    sizes = [int(n) for n in args.devices.split(",")]
    raise_file_limit()  # before the broker starts: it holds a descriptor per device too
    results: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="tandem-bench-fleet-") as tmp, MosquittoBroker(free_port()) as broker:
        hub = HubUnderTest(Path(tmp), broker.port, args.database_url, args.ingress_replicas, args.model_pool)
        try:
            broker_process = psutil.Process(broker.pid) if broker.pid else None
            for size in sizes:
                broker_cpu = sum(broker_process.cpu_times()[:2]) if broker_process else 0.0
                started = time.monotonic()
                sampler = MemorySampler(hub)
                outcome: FleetRun = run_fleet(
                    size, broker.port, hub.grpc_port, args.period, args.seconds, grpc_every=args.grpc_every,
                    prefix=f"sim{size}-",
                )  # fmt: skip
                samples = sampler.stop()
                figures = outcome.summary()
                if broker_process is not None:  # the broker's share of one core over the run
                    used = sum(broker_process.cpu_times()[:2]) - broker_cpu
                    figures["broker_cpu_cores"] = round(used / (time.monotonic() - started), 3)
                figures["hub_rss_mb"] = round(samples[-1], 1) if samples else 0.0
                figures["hub_rss_growth"] = round(growth(samples), 4)
                results.append(figures)
                print(_line(figures), file=sys.stderr, flush=True)
        finally:
            hub.stop()
    _print(results, args)
    return 0


def _line(f: dict[str, object]) -> str:
    return (
        f"  {f['devices']:>7} {f['offered_per_s']:>8.1f} {f['escalations_per_s']:>9.1f} {f['p50_ms']:>8.1f}"
        f" {f['p99_ms']:>8.1f} {f['failed']:>6} {f['lost']:>5} {f['drain_s']:>6.1f} {f['hub_rss_mb']:>8.0f}"
        f" {f['hub_rss_growth']:>7.3f}"
    )


def _print(results: list[dict[str, object]], args: argparse.Namespace) -> None:
    print(
        f"tools/bench fleet: model_pool {args.model_pool}; one escalation per device every {args.period:g} s,"
        f" {args.seconds:g} s measured per size,"
        f" 640x480 JPEG ({results[0]['bytes_per_escalation'] if results else 0} bytes per escalation), every"
        f" {args.grpc_every}th device on gRPC, Python {sys.version.split()[0]}"
    )
    print(f"  {'devices':>7} {'offered':>8} {'answered':>9} {'p50 ms':>8} {'p99 ms':>8} {'failed':>6} {'lost':>5}"
          f" {'drain':>6} {'hub MB':>8} {'growth':>7}")  # fmt: skip
    for figures in results:
        print(_line(figures))
    goal = next((r for r in results if r["devices"] == GOAL["devices"]), results[-1] if results else {})
    if goal:
        met = (
            goal["lost"] == 0
            and float(goal["p99_ms"]) <= GOAL["p99_ms"]  # type: ignore[arg-type]
            and float(goal["hub_rss_growth"]) <= GOAL["hub_rss_growth"]  # type: ignore[arg-type]
        )
        print(
            f"  goal at {goal['devices']} devices: 0 lost, p99 <= {GOAL['p99_ms']:g} ms, memory growth <="
            f" {GOAL['hub_rss_growth']}: {'met' if met else 'NOT met'}"
        )
    if args.json:
        top = {k: goal.get(k) for k in ("devices", "escalations_per_s", "lost", "p99_ms", "hub_rss_growth")}
        print(json.dumps({**top, "runs": results}))
