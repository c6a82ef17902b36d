"""Tenants and quotas: whose a device is, whether its escalation may come in now, and who runs first.

A tenant owns devices by id (globs, ``fnmatchcase``; SQLite's GLOB matches the same way for the trace store) and
device groups. At the ingress every escalation takes a token from its device's bucket
(``quotas.device_escalations_per_s``) and from its tenant's (``escalations_per_s``), and is refused while the
tenant holds ``max_stored_traces``: ``QuotaExceeded`` with the quota's name and when to try again (gRPC
RESOURCE_EXHAUSTED, which a device retries; over MQTT no confirmation, so the device's outbox sends it again).
Past the ingress, ``PriorityGate`` lets at most ``max_concurrent_runs`` escalations use the models at once and
lets the highest priority through first, so a flooding tenant's queue does not sit in front of another's.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Optional

from cloud.config import QuotaConfig, TenantConfig
from cloud.errors import QuotaExceeded

STORED_COUNT_EVERY_S = 5.0  # a tenant's stored traces are counted again at most this often


@dataclass
class TokenBucket:
    """``rate`` tokens a second, up to ``burst``; ``take`` spends one if there is one."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = 0.0

    def take(self, now: float) -> bool:
        if self.tokens < 0:  # first use: full
            self.tokens, self.at = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    def wait_s(self) -> float:
        """How long until the next token."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


def _bucket(rate: Optional[float], burst: Optional[float]) -> Optional[TokenBucket]:
    return TokenBucket(rate, burst or max(1.0, rate)) if rate is not None else None


class Tenancy:
    """Quotas at the ingress. ``count_stored(globs)``: how many traces the store holds for devices matching them."""

    def __init__(
        self,
        tenants: Mapping[str, TenantConfig],
        quotas: QuotaConfig,
        count_stored: Callable[[Sequence[str]], int] = lambda _globs: 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tenants = dict(tenants)
        self._quotas = quotas
        self._count_stored = count_stored
        self._clock = clock
        self._tenant_buckets = {
            name: bucket
            for name, tenant in self.tenants.items()
            if (bucket := _bucket(tenant.escalations_per_s, tenant.escalations_burst)) is not None
        }
        self._device_buckets: dict[str, TokenBucket] = {}
        self._stored: dict[str, tuple[float, int]] = {}  # tenant -> (counted at, count)

    def tenant_of(self, device_id: str) -> Optional[str]:
        return next(
            (name for name, t in self.tenants.items() if any(fnmatchcase(device_id, g) for g in t.devices)), None
        )

    def priority_of(self, device_id: str) -> int:
        tenant = self.tenant_of(device_id)
        return self.tenants[tenant].priority if tenant is not None else 0

    def admit(self, device_id: str) -> None:
        """Spend the escalation's tokens, or QuotaExceeded (nothing spent) naming the quota."""
        now = self._clock()
        tenant = self.tenant_of(device_id)
        device = self._device_bucket(device_id)
        if device is not None and not device.take(now):
            raise QuotaExceeded(
                f"device {device_id} is over its quota of {device.rate:g} escalations/s",
                "device_escalations_per_s",
                device.wait_s(),
            )
        if tenant is None:
            return
        bucket = self._tenant_buckets.get(tenant)
        if bucket is not None and not bucket.take(now):
            if device is not None:
                device.give_back()
            message = f"tenant {tenant} is over its quota of {bucket.rate:g} escalations/s"
            raise QuotaExceeded(message, "escalations_per_s", bucket.wait_s())
        try:
            self._count_one_stored(tenant, now)
        except QuotaExceeded:
            self.refund(device_id)
            raise

    def refund(self, device_id: str) -> None:
        """Give an admitted escalation's tokens back (it was a duplicate: nothing new to run)."""
        device = self._device_buckets.get(device_id)
        if device is not None:
            device.give_back()
        tenant = self.tenant_of(device_id)
        bucket = self._tenant_buckets.get(tenant) if tenant is not None else None
        if bucket is not None:
            bucket.give_back()

    def _device_bucket(self, device_id: str) -> Optional[TokenBucket]:
        if self._quotas.device_escalations_per_s is None:
            return None
        if device_id not in self._device_buckets:
            self._device_buckets[device_id] = TokenBucket(
                self._quotas.device_escalations_per_s,
                self._quotas.device_escalations_burst or max(1.0, self._quotas.device_escalations_per_s),
            )
        return self._device_buckets[device_id]

    def _count_one_stored(self, tenant: str, now: float) -> None:
        """QuotaExceeded if the tenant holds its max_stored_traces; else count the one coming in. The store is
        counted again every STORED_COUNT_EVERY_S (pruning lowers it), in between the count is kept here."""
        limit = self.tenants[tenant].max_stored_traces
        if limit is None:
            return
        counted_at, count = self._stored.get(tenant, (-STORED_COUNT_EVERY_S, 0))
        if now - counted_at >= STORED_COUNT_EVERY_S:
            counted_at, count = now, self._count_stored(self.tenants[tenant].devices)
        self._stored[tenant] = (counted_at, count)
        if count >= limit:
            raise QuotaExceeded(
                f"tenant {tenant} holds {count} traces, its quota is {limit}: they age out with trace_retention_s",
                "max_stored_traces",
                STORED_COUNT_EVERY_S,
            )
        self._stored[tenant] = (counted_at, count + 1)


@dataclass(order=True)
class _Waiter:
    rank: tuple[int, int]
    ready: asyncio.Future[None] = field(compare=False)


class PriorityGate:
    """At most ``slots`` holders at once; waiters go in by priority (higher first), then in arrival order."""

    def __init__(self, slots: int) -> None:
        self._free = slots
        self._waiting: list[_Waiter] = []
        self._order = itertools.count()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @asynccontextmanager
    async def slot(self, priority: int) -> AsyncIterator[None]:
        if self._free > 0 and not self._waiting:
            self._free -= 1
        else:
            waiter = _Waiter((-priority, next(self._order)), asyncio.get_running_loop().create_future())
            heapq.heappush(self._waiting, waiter)
            try:
                await waiter.ready
            except asyncio.CancelledError:
                if waiter.ready.done() and not waiter.ready.cancelled():
                    self._release()  # handed a slot as it was cancelled: pass it on
                else:
                    self._waiting.remove(waiter)
                    heapq.heapify(self._waiting)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiting:
            waiter = heapq.heappop(self._waiting)
            if not waiter.ready.done():
                waiter.ready.set_result(None)
                return
        self._free += 1
