"""The registry through the running hub: REST under /v1/models and the `tandem hub models` commands."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import urllib.error
import urllib.request


def call(url: str, method: str = "GET", body: bytes | None = None, content_type: str = "application/json"):
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


def tandem(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tandem.cli", *args], capture_output=True, text=True, check=False)


def test_registry_over_rest(hub, demo_assets):
    hub.start()
    base = f"http://127.0.0.1:{hub.http_port}"
    blob = (demo_assets / "models" / "digits-weak.onnx").read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    assert call(f"{base}/v1/artifacts/{'0' * 64}", "PUT", blob, "application/octet-stream")[0] == 400
    status, stored = call(f"{base}/v1/artifacts/{digest}", "PUT", blob, "application/octet-stream")
    assert status == 201 and stored == {"sha256": digest, "bytes": len(blob)}
    spec = {
        "name": "rest-weak",
        "version": "1",
        "task": "classification",
        "tags": ["digits"],
        "precision": "fp32",
        "accuracy": 0.9611,
        "artifact_sha256": digest,
    }
    status, model = call(f"{base}/v1/models", "POST", json.dumps(spec).encode())
    assert status == 201 and model["status"] == "registered" and model["artifact_bytes"] == len(blob)
    assert call(f"{base}/v1/models", "POST", json.dumps(spec).encode())[0] == 409
    bad = {**spec, "version": "2", "accuracy": 3}
    assert call(f"{base}/v1/models", "POST", json.dumps(bad).encode())[0] == 422
    status, found = call(f"{base}/v1/models?tag=digits&task=classification")
    assert status == 200 and [m["name"] for m in found] == ["rest-weak"]
    status, served = call(f"{base}/v1/models/rest-weak/1", "PATCH", json.dumps({"status": "serving"}).encode())
    assert status == 200 and served["status"] == "serving"
    assert call(f"{base}/v1/models/rest-weak/1/retire", "POST", b"")[1]["status"] == "retired"
    status, refused = call(f"{base}/v1/models/rest-weak/1", "PATCH", json.dumps({"status": "serving"}).encode())
    assert status == 409 and "from retired to serving" in refused["detail"]
    assert call(f"{base}/v1/models/nope/1")[0] == 404


def test_registry_from_the_command_line(hub, demo_assets):
    hub.start()
    url = ["--url", f"http://127.0.0.1:{hub.http_port}"]
    model = demo_assets / "models" / "digits-strong.onnx"
    register = ["hub", "models", *url, "register", str(model), "--name", "cli-strong", "--version", "3"]
    register += ["--task", "classification"]
    done = tandem(*register, "--tag", "digits", "--tag", "cloud", "--latency-ms", "0.6")
    assert done.returncode == 0, done.stderr
    assert "cli-strong" in done.stdout and "registered" in done.stdout
    listed = tandem("hub", "models", *url, "list", "--tag", "cloud")
    assert "cli-strong" in listed.stdout and "1 model versions" in listed.stdout
    assert tandem("hub", "models", *url, "update", "cli-strong", "3", "--status", "serving").returncode == 0
    shown = json.loads(tandem("hub", "models", *url, "show", "cli-strong", "3").stdout)
    assert shown["status"] == "serving" and shown["latency_ms"] == 0.6
    again = tandem(*register)  # the same version a second time
    assert again.returncode == 1 and "409" in again.stderr and "already registered" in again.stderr
