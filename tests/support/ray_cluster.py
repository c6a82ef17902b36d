"""A real multi-node Ray cluster on this machine: ``ray start --head`` and workers joined with ``ray start
--address``, each node a process family of its own, so one node can be killed (SIGKILL to every process of
it, as a machine that loses power) while the rest run on.

Every node gets its own ports: two raylets on one host would otherwise both want the dashboard agent's and
the metrics ports. Serve's proxies run on the head only (``proxy_location: HeadOnly``): on one machine a
second node's proxy would want the same HTTP and gRPC ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import psutil

from tandem.broker import free_port, wait_for_port

RAY = str(Path(sys.executable).with_name("ray"))
SERVE = str(Path(sys.executable).with_name("serve"))


class RayNode:
    def __init__(self, name: str, argv: list[str], log: Path, env: dict[str, str]) -> None:
        self.name = name
        self._log = log.open("a")
        self.process = subprocess.Popen(
            argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def family(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> None:
        """SIGKILL to the node's every process at once: its raylet, workers, agents."""
        family = self.family()
        for process in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGKILL)
        psutil.wait_procs(family, timeout=30)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)  # reaped: its exit status collected
        self._log.close()


class RayCluster:
    """``start()`` the head (with the dashboard, which ``serve deploy`` talks to), ``add_worker()`` nodes,
    ``deploy(config)`` as ``serve deploy`` does, ``stop()`` everything."""

    def __init__(self, work: Path, cpus_per_node: int = 2) -> None:
        self.work = work
        self.cpus = cpus_per_node
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[RayNode] = []
        # Token authentication, as Ray 2.60 turns on for a new cluster: one token for every node and every client
        # (the ray and serve commands here), given in the environment.
        self.env = {
            **os.environ,
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_SERVE_GRPC_MAX_MESSAGE_SIZE": "4194304",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
            # One proxy (on the head) stands for a load balancer over every node's proxy: it spreads requests over
            # all nodes' replicas instead of preferring its own node's.
            "RAY_SERVE_PROXY_PREFER_LOCAL_NODE_ROUTING": "0",
            # A node that stops answering is declared dead after about 3 s rather than Ray's default of some
            # 15-25 s (the GCS reads these; README, "Scaling out"): until then, calls to its replicas hang.
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
        }

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _node_ports(self) -> list[str]:
        ports = ("node-manager", "object-manager", "dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export",
                 "runtime-env-agent")  # fmt: skip
        flags = [part for name in ports for part in (f"--{name}-port", str(free_port()))]
        return [*flags, "--min-worker-port", "0", "--max-worker-port", "0"]  # workers: any free port

    def start(self) -> None:
        argv = [
            RAY, "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
            "--port", str(self.gcs_port), "--num-cpus", str(self.cpus), "--resources", '{"head_node": 1}',
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port",
            str(self.dashboard_port), "--ray-client-server-port", str(free_port()),
            "--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats",
            *self._node_ports(),
        ]  # fmt: skip
        self.nodes.append(RayNode("head", argv, self.work / "head.log", self.env))
        if not wait_for_port("127.0.0.1", self.dashboard_port, 90.0):
            raise RuntimeError(f"the Ray head did not start: {(self.work / 'head.log').read_text()[-3000:]}")

    def add_worker(self, name: str) -> RayNode:
        before = self.alive_nodes()
        argv = [
            RAY, "start", "--block", "--address", self.address, "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.cpus), "--resources", f'{{"{name}": 1}}',
            "--object-store-memory", str(128 * 1024 * 1024), "--disable-usage-stats",
            *self._node_ports(),
        ]  # fmt: skip
        node = RayNode(name, argv, self.work / f"{name}.log", self.env)
        self.nodes.append(node)
        end = time.monotonic() + 90
        while self.alive_nodes() <= before:
            if time.monotonic() > end or node.process.poll() is not None:
                raise RuntimeError(f"node {name} did not join: {(self.work / f'{name}.log').read_text()[-3000:]}")
            time.sleep(0.5)
        return node

    def alive_nodes(self) -> int:
        """How many nodes the cluster counts alive (``ray list nodes``, through the head's dashboard)."""
        done = subprocess.run(
            [RAY, "list", "nodes", "--address", self.dashboard, "--filter", "state=ALIVE", "--format", "json"],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=60,
        )
        if done.returncode != 0 or not done.stdout.lstrip().startswith("["):
            return 0  # the head not up yet, or "No resource in the cluster"
        return len(json.loads(done.stdout))

    def deploy(self, config: Path) -> None:
        """``serve deploy CONFIG`` against the head's dashboard (returns once the config is accepted)."""
        subprocess.run(
            [SERVE, "deploy", str(config), "--address", self.dashboard],
            check=True,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=120,
        )

    def serve_status(self) -> Optional[str]:
        done = subprocess.run(
            [SERVE, "status", "--address", self.dashboard],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=60,
        )
        return done.stdout if done.returncode == 0 else None

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.kill()
        self.nodes = []
        # `ray start --head` wrote its address where a later `ray.init()` or `serve run` on this machine looks for
        # a cluster to join ("auto"): left there, the next one would try the dead head.
        from ray._common.utils import get_ray_address_file, reset_ray_address

        written = Path(get_ray_address_file(None))
        if written.exists() and written.read_text().strip().endswith(f":{self.gcs_port}"):
            reset_ray_address()
