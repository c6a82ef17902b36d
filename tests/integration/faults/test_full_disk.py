"""A full disk under the device's store: a tmpfs of 2 MiB made for the test. The runtime goes on reading frames,
says "store full" in /healthz and the tandem_edge_store_full gauge, loses none of what it had written, keeps the
store intact, and records frames again once space returns."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.app import EdgeRuntime
from edge.config import GrpcConfig, JudgeConfig
from tandem.broker import free_port
from tests.integration.conftest import edge_config
from tests.support.ledger import audit_device
from tests.support.report import report


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=False, capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path, leave_bytes: int) -> Path:
    """A file that takes all the free space but ``leave_bytes``."""
    stats = os.statvfs(folder)
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - leave_bytes))
    return filler


def test_a_full_disk_is_a_state_not_a_crash(tmp_path, demo_assets, small_disk, hub):
    config = edge_config(tmp_path, demo_assets, hub, free_port(), device_id="cam-full")
    config = config.model_copy(
        update={
            "state_path": small_disk / "cam-full.db",
            "judge": JudgeConfig(preset="cloud_only"),
            "transport": GrpcConfig(target=f"127.0.0.1:{free_port()}"),  # no hub: everything stays queued
        }
    )
    with EdgeRuntime(config) as runtime:
        runtime.run(max_frames=20)
        queued_before = len(runtime.store.outbox())
        filler = fill(small_disk, leave_bytes=48 * 1024)
        runtime.run(max_frames=300)
        state = runtime.runtime_state()
        healthy, body = runtime.health_probe()
        failed_writes = runtime.metrics.value("store_errors", operation="record_trace_full")
        assert state.store_full and failed_writes > 0
        assert healthy and "store full: frames are not recorded" in body["degraded"]
        assert runtime.metrics.registry.get_sample_value("tandem_edge_store_full") == 1.0
        written_while_full = audit_device(config.state_path)

        filler.unlink()
        runtime.run(max_frames=20)
        assert not runtime.runtime_state().store_full
        assert runtime.metrics.registry.get_sample_value("tandem_edge_store_full") == 0.0
        queued_after = len(runtime.store.outbox())

    books = audit_device(config.state_path)
    report(
        "full disk under the device store",
        "a 2 MiB tmpfs filled to 48 kB free while the device escalated every frame, then freed",
        {
            "escalations queued before": queued_before,
            "writes refused while full": int(failed_writes),
            "escalations on disk while full": written_while_full.escalated,
            "escalations after space returned": queued_after,
            "lost": len(books.lost),
            "integrity": books.integrity,
        },
    )
    assert written_while_full.integrity == "ok" and books.integrity == "ok"
    assert written_while_full.escalated >= queued_before  # nothing written before the disk filled was lost
    assert queued_after == books.escalated == books.waiting  # every escalation on disk is still queued
    assert queued_after >= written_while_full.escalated + 20  # and the frames after space returned were recorded
    assert books.lost == []
