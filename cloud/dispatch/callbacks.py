"""Results to HTTP endpoints: ``delivery.callbacks`` in the hub's config.

A device whose id matches a rule's glob gets its results POSTed to the rule's
URL (JSON or protobuf) instead of published on MQTT; a 2xx reply is the
acknowledgement. A refused or failed POST is logged and counted, and the
delivery loop sends the result again later (``cloud.dispatch.delivery``).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
from collections.abc import Callable, Sequence
from typing import Optional

import httpx

from cloud.config import CallbackRule
from cloud.metrics import HubMetrics
from protocol.codec import Encoding, encode_result
from protocol.messages import EscalationResult

logger = logging.getLogger(__name__)

CONTENT_TYPES = {Encoding.JSON: "application/json", Encoding.PROTOBUF: "application/x-protobuf"}


class HttpCallbacks:
    def __init__(
        self,
        rules: Sequence[CallbackRule],
        on_acked: Callable[[str, str], object],
        metrics: HubMetrics,
        transport: Optional[httpx.AsyncBaseTransport] = None,
    ) -> None:
        """``on_acked(trace_id, device_id)`` is called on the event loop for every 2xx reply."""
        self._rules = list(rules)
        self._on_acked = on_acked
        self._metrics = metrics
        self._client = httpx.AsyncClient(transport=transport)
        self._tasks: set[asyncio.Task[None]] = set()

    def rule_for(self, device_id: str) -> Optional[CallbackRule]:
        return next((r for r in self._rules if fnmatch.fnmatchcase(device_id, r.devices)), None)

    def post(self, rule: CallbackRule, result: EscalationResult) -> None:
        """Start the POST on the running event loop; never waits for it."""
        task = asyncio.get_running_loop().create_task(self._post(rule, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _post(self, rule: CallbackRule, result: EscalationResult) -> None:
        encoding = Encoding(rule.encoding)
        headers = {**rule.headers, "Content-Type": CONTENT_TYPES[encoding], "X-Tandem-Trace-Id": result.trace_id}
        try:
            reply = await self._client.post(
                rule.url, content=encode_result(result, encoding), headers=headers, timeout=rule.timeout_ms / 1000.0
            )
        except httpx.HTTPError as exc:
            logger.warning(
                "result %s: callback to %s failed (%s: %s); sent again later",
                result.trace_id,
                rule.url,
                type(exc).__name__,
                exc,
            )
            self._metrics.delivery_errors.labels(channel="callback", reason=type(exc).__name__).inc()
            return
        if not reply.is_success:
            logger.warning(
                "result %s: callback %s answered %d; sent again later", result.trace_id, rule.url, reply.status_code
            )
            self._metrics.delivery_errors.labels(channel="callback", reason=f"http_{reply.status_code}").inc()
            return
        self._on_acked(result.trace_id, result.device_id)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        await self.drain()
        await self._client.aclose()
