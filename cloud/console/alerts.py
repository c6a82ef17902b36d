"""The fleet's alerts: checked every ``console.check_every_s`` by the hub's leader, kept in the fleet store, shown
on the console's Alerts page and POSTed to ``console.alerts.webhook_url``.

    silent            a device with no message for alerts.silent_after_s    cleared when it speaks again
    escalation_jump   a device escalating escalation_jump x its own usual   cleared when it is back under
                      rate, and at least escalation_jump_min_per_s
    rollout_aborted   a rollout in state ABORTED (its rules, or an operator) cleared when it is rolled back

A device's usual rate is a slow moving average of its heartbeats' escalations/s, fed only while it is not
alerting, so a jump does not become the usual at once; a lasting one does, slowly, and clears. The webhook gets
each change once it answers 2xx; until then it is tried again at every check (nothing is lost while the
receiver is down).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import httpx

from cloud.config import AlertConfig
from cloud.fleet.rollout_spec import RolloutState
from cloud.fleet.rollouts import RolloutService
from cloud.fleet.service import FleetService
from cloud.fleet.store import Alert, FleetStore
from cloud.metrics import HubMetrics

logger = logging.getLogger(__name__)

USUAL_WEIGHT = 0.1  # of each new heartbeat in a device's usual escalation rate
USUAL_AFTER = 3  # heartbeats before a device's usual rate is trusted


@dataclass
class _Usual:
    rate: float = 0.0
    heartbeats: int = 0
    last_at: Optional[float] = None


class AlertWatch:
    def __init__(
        self,
        store: FleetStore,
        fleet: Callable[[], FleetService],
        rollouts: Callable[[], RolloutService],
        config: AlertConfig,
        metrics: HubMetrics,
        clock: Callable[[], float] = time.time,
        post: Optional[Callable[[str, dict[str, Any]], int]] = None,
    ) -> None:
        """``post(url, body)``: the webhook's status code (default: an HTTP POST with httpx)."""
        self._store = store
        self._fleet = fleet
        self._rollouts = rollouts
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._post = post or self._http_post
        self._usual: dict[str, _Usual] = {}

    def check(self) -> list[Alert]:
        """One round: raise and clear; then send what the webhook has not taken. Returns the changes."""
        now = self._clock()
        active = {a.alert_id for a in self._store.alerts(active=True, limit=100_000)}
        wanted: dict[str, tuple[str, str, str]] = {}  # alert id -> kind, subject, message
        fleet = self._fleet()
        for device in fleet.store.devices():
            age = now - device.last_seen
            if age > self._config.silent_after_s:
                said = "offline (its last will)" if device.available is False else "silent"
                wanted[f"silent:{device.device_id}"] = (
                    "silent",
                    device.device_id,
                    f"{device.device_id} is {said}: no message for {age:.0f} s",
                )
            jump = self._jump(device.device_id, device.telemetry, device.telemetry_at)
            if jump is not None:
                wanted[f"escalation_jump:{device.device_id}"] = ("escalation_jump", device.device_id, jump)
        for rollout in self._rollouts().summaries():
            if rollout["state"] == RolloutState.ABORTED.value:
                rollout_id = rollout["rollout_id"]
                reason = rollout["reason"] or "aborted"
                wanted[f"rollout_aborted:{rollout_id}"] = (
                    "rollout_aborted",
                    rollout_id,
                    f"rollout {rollout_id} ({rollout['bundle_id']}) aborted: {reason}",
                )
        changes: list[Alert] = []
        for alert_id, (kind, subject, message) in wanted.items():
            if alert_id not in active:
                raised = self._store.raise_alert(kind, subject, message, now)
                if raised is not None:
                    logger.warning("alert: %s", message)
                    self._metrics.alerts.labels(kind=kind).inc()
                    changes.append(raised)
        for alert_id in active - wanted.keys():
            cleared = self._store.clear_alert(alert_id, now)
            if cleared is not None:
                logger.info("alert cleared: %s", cleared.message)
                changes.append(cleared)
        self._notify()
        return changes

    def _jump(self, device_id: str, telemetry: Optional[dict[str, Any]], at: Optional[float]) -> Optional[str]:
        """Why this device's escalation rate is a jump from its usual one, or None. Each heartbeat counts once."""
        usual = self._usual.setdefault(device_id, _Usual())
        if telemetry is None or at is None:
            return None
        rate = float(telemetry.get("escalations_per_s", 0.0))
        bound = max(self._config.escalation_jump * usual.rate, self._config.escalation_jump_min_per_s)
        jumped = usual.heartbeats >= USUAL_AFTER and rate >= bound
        if at != usual.last_at:
            usual.last_at = at
            if not jumped:  # a jump does not become the usual at once
                usual.rate = rate if usual.heartbeats == 0 else (1 - USUAL_WEIGHT) * usual.rate + USUAL_WEIGHT * rate
                usual.heartbeats += 1
            else:
                usual.rate = (1 - USUAL_WEIGHT / 10) * usual.rate + USUAL_WEIGHT / 10 * rate  # a lasting one, slowly
        if not jumped:
            return None
        return f"{device_id} escalates {rate:.2f}/s, {rate / max(usual.rate, 1e-9):.1f}x its usual {usual.rate:.2f}/s"

    def _notify(self) -> None:
        url = self._config.webhook_url
        if url is None:
            return
        for alert in self._store.unnotified_alerts():
            body = {"event": "raised" if alert.active else "cleared", **alert.view()}
            try:
                status = self._post(url, body)
            except Exception as exc:
                status, why = 0, f"{type(exc).__name__}: {exc}"
            else:
                why = f"HTTP {status}"
            if 200 <= status < 300:
                self._store.mark_notified(alert)
                continue
            self._metrics.webhook_errors.inc()
            logger.warning(
                "alert webhook %s did not take %s (%s); trying again at the next check", url, alert.alert_id, why
            )
            return  # in order: the rest wait for the receiver too

    def _http_post(self, url: str, body: dict[str, Any]) -> int:
        return httpx.post(url, json=body, timeout=self._config.webhook_timeout_s).status_code
