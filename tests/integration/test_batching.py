"""Dynamic batching in the hub's model deployment: concurrent escalations run together, each still answered."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from edge.comms.grpc_client import GrpcTransport
from edge.config import GrpcConfig
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id


def test_concurrent_escalations_are_batched(hub, demo_assets):
    hub.start()
    transport = GrpcTransport(GrpcConfig(target=f"127.0.0.1:{hub.grpc_port}", timeout_ms=10_000))
    transport.start()
    frames = sorted((demo_assets / "stream" / "images").iterdir())[:48]
    requests = [
        EscalationRequest(
            trace_id=new_trace_id(),
            device_id="cam-batch",
            deadline_ms=10_000,
            local_prediction=Prediction("weak", "1", ("0", "1"), (0.5, 0.5)),
            input=EncodedImage("image/png", f.read_bytes(), 32, 32),
        )
        for f in frames
    ]
    with ThreadPoolExecutor(32) as pool:
        acks = list(pool.map(lambda r: transport.send(r.trace_id, r.to_proto().SerializeToString()), requests))
    transport.close()
    assert all(a.status.name == "ACCEPTED" for a in acks)

    def trace(trace_id: str) -> dict:
        url = f"http://127.0.0.1:{hub.http_port}/v1/traces/{trace_id}"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return json.loads(reply.read())

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(trace(r.trace_id)["status"] != "SUCCESS" for r in requests):
        time.sleep(0.5)
    traces = [trace(r.trace_id) for r in requests]
    assert all(t["status"] == "SUCCESS" for t in traces)
    sizes = []
    for t in traces:
        hops = [h["hop"] for h in t["result"]["timings"]]
        found = [int(m.group(1)) for h in hops if (m := re.search(r"batch of (\d+)", h))]
        sizes.append(found[0] if found else 1)
    assert max(sizes) > 1, f"no request ran in a batch: {sizes}"
    assert max(sizes) <= 16  # batch_max_size
