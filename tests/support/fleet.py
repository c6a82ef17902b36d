"""A fleet for integration tests: the hub's HTTP API on a real server, device runtimes as processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import uvicorn
import yaml

from cloud.api.access import token_sha256
from cloud.config import OperatorConfig, Role
from cloud.hub import Hub
from common.inference.classify import OnnxModel
from common.inference.golden import make_golden
from tests.support.bundles import frames
from tests.support.waiting import wait_for


class HubThread:
    """A Hub on its own event loop in a thread, as a Serve replica would run it."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hub-loop", daemon=True)

    def call(self, coroutine):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(30)

    def __enter__(self) -> Hub:
        self._thread.start()

        async def start() -> None:
            self.hub.start()

        self.call(start())
        return self.hub

    def __exit__(self, *_exc: object) -> None:
        self.call(self.hub.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


TOKEN = "rollout-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


def operator(token: str, role: str = "admin", groups: tuple[str, ...] = ()) -> OperatorConfig:
    """An operator entry for fleet.operators, holding the token's sha256 as a hub's config does."""
    return OperatorConfig(token_sha256=token_sha256(token), role=Role(role), groups=list(groups))


class HttpThread:
    """The hub's HTTP app on a real server (uvicorn), as Serve's proxy would serve it."""

    def __init__(self, app, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, name="hub-http", daemon=True)

    def __enter__(self) -> HttpThread:
        self._thread.start()
        wait_for(lambda: self.server.started, 30, "the hub's HTTP server")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(10)


class Api:
    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    def get(self, path: str, **kw):
        reply = self.client.get(path, headers=ADMIN, **kw)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def send(self, method: str, path: str, body=None):
        reply = self.client.request(method, path, json=body, headers=ADMIN)
        assert reply.status_code in (200, 201), reply.text
        return reply.json()

    def upload(self, path: Path) -> str:
        data = path.read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        assert self.client.put(f"/v1/artifacts/{sha256}", content=data, headers=ADMIN).status_code == 201
        return sha256


class EdgeProcess:
    def __init__(self, folder: Path, config) -> None:
        self.config = config
        self.config_path = folder / f"{config.device_id}.yaml"
        self.config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
        self.log = folder / f"{config.device_id}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str] | None = None) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tandem.cli", "edge", "run", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
            )

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None

    def models_per_frame(self) -> list[tuple[int, str]]:
        """(frame index, model id) of every recorded frame, in order."""
        with sqlite3.connect(f"file:{self.config.state_path}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT frame_index, history FROM traces ORDER BY frame_index").fetchall()
        found = []
        for index, history in rows:
            # history: [at, from state, to state, reason]; INFERRED's reason is "model id: label (confidence)"
            inferred = next((h for h in json.loads(history) if h[2] == "INFERRED"), None)
            found.append((index, inferred[3].split(":")[0] if inferred else "-"))
        return found


def devices(api: Api) -> dict[str, dict]:
    return {d["device_id"]: d for d in api.get("/v1/devices")}


def bundle(api: Api, demo_assets: Path, model: Path, golden_from: Path, name: str) -> str:
    """Upload the model and its golden samples (the answers of ``golden_from``), and have the hub sign them."""
    golden = model.with_suffix(".golden.npz")
    golden.write_bytes(make_golden(OnnxModel(golden_from).predict, frames(demo_assets / "stream")))
    body = {
        "name": name,
        "version": model.stem,
        "model": {"model_id": model.stem, "file": "model.onnx", "golden": "golden.npz"},
        "files": {
            "model.onnx": {"sha256": api.upload(model), "role": "model"},
            "golden.npz": {"sha256": api.upload(golden), "role": "golden"},
        },
        "device_classes": ["*/cpu"],
    }
    return api.send("POST", "/v1/admin/bundles", body)["bundle_id"]


def finished(api: Api, rollout_id: str, states=("COMPLETED", "ABORTED")) -> dict:
    status = {}

    def done() -> bool:
        status.update(api.get(f"/v1/admin/rollouts/{rollout_id}"))
        return status["state"] in states

    wait_for(done, 120, f"rollout {rollout_id} to end", poll_s=0.25)
    return status
