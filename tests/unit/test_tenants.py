"""Tenants' quotas and the priority gate, with a hand-driven clock."""

from __future__ import annotations

import asyncio

import pytest

from cloud.config import QuotaConfig, TenantConfig
from cloud.errors import QuotaExceeded
from cloud.tenants import PriorityGate, Tenancy


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


TENANTS = {
    "acme": TenantConfig(devices=["acme-*"], groups=["acme-lobby"], escalations_per_s=2, escalations_burst=2),
    "globex": TenantConfig(devices=["gx-*", "globex-*"], priority=5, max_stored_traces=3),
}


def test_a_device_belongs_to_the_first_tenant_whose_globs_match():
    tenancy = Tenancy(TENANTS, QuotaConfig())
    assert tenancy.tenant_of("acme-cam-1") == "acme"
    assert tenancy.tenant_of("globex-7") == "globex" and tenancy.tenant_of("gx-1") == "globex"
    assert tenancy.tenant_of("ACME-cam") is None  # case counts, as in SQLite's GLOB
    assert tenancy.priority_of("gx-1") == 5 and tenancy.priority_of("stray") == 0


def test_a_tenants_rate_is_shared_by_its_devices_and_refills():
    clock = Clock()
    tenancy = Tenancy(TENANTS, QuotaConfig(), clock=clock)
    tenancy.admit("acme-1")
    tenancy.admit("acme-2")
    with pytest.raises(QuotaExceeded, match="tenant acme is over its quota of 2 escalations/s") as refused:
        tenancy.admit("acme-3")
    assert refused.value.quota == "escalations_per_s" and 0 < refused.value.retry_after_s <= 0.5
    tenancy.admit("stray-device")  # no tenant, no quota
    clock.now += 0.5
    tenancy.admit("acme-3")
    tenancy.refund("acme-3")  # a duplicate gives its token back
    tenancy.admit("acme-1")


def test_one_device_cannot_use_up_its_tenants_quota():
    clock = Clock()
    quotas = QuotaConfig(device_escalations_per_s=1, device_escalations_burst=1)
    tenants = {"acme": TenantConfig(devices=["acme-*"], escalations_per_s=3, escalations_burst=3)}
    tenancy = Tenancy(tenants, quotas, clock=clock)
    tenancy.admit("acme-noisy")
    for _ in range(5):
        with pytest.raises(QuotaExceeded, match="device acme-noisy"):
            tenancy.admit("acme-noisy")
    tenancy.admit("acme-quiet")  # the refusals above took nothing from the tenant
    tenancy.admit("acme-other")


def test_stored_traces_are_a_quota_counted_from_the_store():
    clock = Clock()
    stored = {"n": 2}
    asked: list[list[str]] = []

    def count(globs):
        asked.append(list(globs))
        return stored["n"]

    tenancy = Tenancy(TENANTS, QuotaConfig(), count_stored=count, clock=clock)
    tenancy.admit("gx-1")  # 2 stored, the third comes in
    with pytest.raises(QuotaExceeded, match="globex holds 3 traces, its quota is 3"):
        tenancy.admit("gx-1")
    assert asked == [["gx-*", "globex-*"]]  # counted once, then kept
    stored["n"] = 0  # pruned
    clock.now += 5
    tenancy.admit("gx-1")
    assert len(asked) == 2


def test_the_gate_lets_the_highest_priority_in_first():
    async def scenario() -> list[int]:
        gate = PriorityGate(1)
        order: list[int] = []
        release = asyncio.Event()

        async def hold() -> None:
            async with gate.slot(0):
                await release.wait()

        async def run(priority: int) -> None:
            async with gate.slot(priority):
                order.append(priority)

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        waiters = [asyncio.create_task(run(p)) for p in (0, 5, 1, 5)]
        cancelled = asyncio.create_task(run(9))
        await asyncio.sleep(0)
        cancelled.cancel()  # a caller that went away leaves no slot taken
        await asyncio.sleep(0)
        assert gate.waiting == 4
        release.set()
        await asyncio.gather(holder, *waiters)
        async with gate.slot(0):  # every slot came back
            pass
        return order

    assert asyncio.run(scenario()) == [5, 5, 1, 0]
