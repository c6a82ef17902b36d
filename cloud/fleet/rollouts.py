"""Rollouts: a bundle to a set of devices, in waves, each soaked before the next, with abort rules that watch
both failures and the new model's quality on the devices' own frames.

    start      the target's devices are put in waves (fixed cumulative shares, or exponential); wave 0 is sent
    each check (every few seconds, and at every device report)
               a device in a wave stuck in one step past device_timeout_s is failed (no wedged rollout)
               abort rules: the failure share once min_devices have finished; golden-check failures; and the
               updated devices' escalation rate, confidence and p95 latency against the devices not yet updated
               (or, in the last wave, against their own figures at the rollout's start)
               a wave whose devices have all finished soaks for soak_s, then the next is sent; after the last,
               COMPLETED
    abort      every device the rollout reached goes back to the model it had (its previous bundle with
               rollback allowed, or its own model): ABORTED; ``rollback`` does the same to a finished rollout
    a newer rollout that reaches a device takes it over: the older one marks it superseded and does not wait

Device states: waiting (its wave has not come), then the device's own (pending, downloading, verifying,
preparing, probation, active, rolled_back, failed), timed_out, superseded, reverted.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Optional

from cloud.errors import RolloutError, RolloutNotFound
from cloud.fleet.rollout_spec import RolloutSpec, RolloutState, Rules, TargetSpec, mean, plan_waves, signals
from cloud.fleet.rollout_store import DeviceRow, RolloutRow, RolloutStore
from cloud.fleet.service import FleetService
from cloud.fleet.store import Device
from cloud.metrics import HubMetrics

logger = logging.getLogger(__name__)

FINAL = ("active", "rolled_back", "failed", "timed_out", "superseded", "reverted")
FAILED = ("rolled_back", "failed", "timed_out")
REACHED = ("pending", "downloading", "verifying", "preparing", "probation", "active", "rolled_back")


class RolloutService:
    def __init__(
        self,
        store: RolloutStore,
        fleet: FleetService,
        metrics: Optional[HubMetrics] = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.RLock()

    # -- operator actions ---------------------------------------------------------------------------------------

    def start(self, spec: RolloutSpec, who: str) -> RolloutRow:
        now = self._clock()
        devices = self._targets(spec.target)
        if not devices:
            raise RolloutError(f"no device matches the target {spec.target.model_dump(exclude_defaults=True)}")
        rollout_id = f"ro-{uuid.uuid4().hex[:10]}"
        waves = plan_waves(spec, [d.device_id for d in devices], rollout_id)
        by_id = {d.device_id: d for d in devices}
        rows = [
            DeviceRow(
                rollout_id,
                device_id,
                wave,
                "waiting",
                from_bundle=by_id[device_id].model.get("bundle_id", ""),
                updated_at=now,
            )
            for wave, members in enumerate(waves)
            for device_id in members
        ]
        baseline = {d.device_id: s for d in devices if (s := signals(d)) is not None}
        rollout = RolloutRow(
            rollout_id, spec.model_dump(), RolloutState.RUNNING.value, 0, None, now, who, now, baseline=baseline
        )
        with self._lock:
            self._supersede([d.device_id for d in devices], rollout_id)
            self._event(rollout, f"started by {who}: {spec.bundle_id} to {len(devices)} devices in {len(waves)} waves")
            self.store.put(rollout, rows)
            self._send_wave(rollout, 0)
        self.fleet.store.audit(now, who, "rollout_start", rollout_id, spec.model_dump())
        return rollout

    def pause(self, rollout_id: str, who: str) -> RolloutRow:
        return self._set_state(rollout_id, who, RolloutState.PAUSED, from_states=(RolloutState.RUNNING,))

    def resume(self, rollout_id: str, who: str) -> RolloutRow:
        return self._set_state(rollout_id, who, RolloutState.RUNNING, from_states=(RolloutState.PAUSED,))

    def abort(self, rollout_id: str, who: str, reason: str = "aborted by an operator") -> RolloutRow:
        with self._lock:
            rollout = self._get(rollout_id)
            if rollout.state not in (RolloutState.RUNNING.value, RolloutState.PAUSED.value):
                raise RolloutError(f"rollout {rollout_id} is {rollout.state}; only a running or paused one aborts")
            rollout = self._revert(rollout, RolloutState.ABORTED, f"{reason} ({who})")
        self.fleet.store.audit(self._clock(), who, "rollout_abort", rollout_id, {"reason": reason})
        return rollout

    def rollback(self, rollout_id: str, who: str) -> RolloutRow:
        with self._lock:
            rollout = self._revert(self._get(rollout_id), RolloutState.ROLLED_BACK, f"rolled back by {who}")
        self.fleet.store.audit(self._clock(), who, "rollout_rollback", rollout_id, {})
        return rollout

    def status(self, rollout_id: str) -> dict[str, Any]:
        rollout = self._get(rollout_id)
        devices = self.store.devices(rollout_id)
        counts: dict[str, int] = {}
        for d in devices:
            counts[d.state] = counts.get(d.state, 0) + 1
        return {
            "rollout_id": rollout.rollout_id,
            "state": rollout.state,
            "reason": rollout.reason,
            "bundle_id": rollout.spec["bundle_id"],
            "wave": rollout.wave,
            "waves": 1 + max((d.wave for d in devices), default=0),
            "created_at": rollout.created_at,
            "created_by": rollout.created_by,
            "counts": counts,
            "rules": (values := self._rule_values(rollout, devices)),
            "checks": rule_checks(RolloutSpec.model_validate(rollout.spec).rules, values),
            "devices": [
                {
                    "device_id": d.device_id,
                    "wave": d.wave,
                    "state": d.state,
                    "progress": d.progress,
                    "reason": d.reason,
                    "detail": d.detail,
                    "from_bundle": d.from_bundle,
                }
                for d in devices
            ],
            "timeline": rollout.timeline,
        }

    def summaries(self) -> list[dict[str, Any]]:
        return [
            {
                "rollout_id": r.rollout_id,
                "state": r.state,
                "bundle_id": r.spec["bundle_id"],
                "wave": r.wave,
                "created_at": r.created_at,
                "created_by": r.created_by,
                "reason": r.reason,
            }
            for r in self.store.rollouts()
        ]

    # -- what devices report ------------------------------------------------------------------------------------

    def on_update(self, device_id: str, update: dict[str, Any]) -> None:
        """A device's report on a bundle: its row in the rollout that sent it."""
        rollout_id = update.get("rollout_id", "")
        with self._lock:
            rollout = self.store.get(rollout_id) if rollout_id else None
            if rollout is None:
                return
            row = next((d for d in self.store.devices(rollout_id) if d.device_id == device_id), None)
            if row is None or row.state in ("waiting", "superseded", "reverted", "timed_out"):
                return
            state = update.get("state", row.state)
            if state == "pending" and update.get("recovered_from"):
                state = row.state  # a restart's note: the device goes on from where it was
            changed = replace(
                row,
                state=state,
                progress=float(update.get("progress", 0.0)),
                reason=update.get("reason", ""),
                detail=update.get("detail", ""),
                updated_at=self._clock(),
            )
            self.store.put_devices([changed])  # the device's row alone: the rollout's row is the leader's to move
            if changed.state != row.state and changed.state in FINAL:
                with self.store.transaction():  # read again inside: another replica may have moved it since
                    current = self.store.get(rollout_id) or rollout
                    self._event(
                        current, f"{device_id}: {changed.state}" + (f" ({changed.reason})" if changed.reason else "")
                    )
                    self.store.put(current)

    # -- the periodic check -------------------------------------------------------------------------------------

    def check(self) -> None:
        with self._lock:
            for rollout in self.store.rollouts((RolloutState.RUNNING.value,)):
                self._advance(rollout)

    def _advance(self, rollout: RolloutRow) -> None:
        spec = RolloutSpec.model_validate(rollout.spec)
        now = self._clock()
        devices = self.store.devices(rollout.rollout_id)
        stuck = [
            replace(
                d,
                state="timed_out",
                reason="timeout",
                detail=f"no result in {spec.device_timeout_s:.0f} s",
                updated_at=now,
            )
            for d in devices
            if d.state not in (*FINAL, "waiting") and d.started_at and now - d.started_at > spec.device_timeout_s
        ]
        if stuck:
            for d in stuck:
                self._event(rollout, f"{d.device_id}: timed out")
            self.store.put(rollout, stuck)
            devices = self.store.devices(rollout.rollout_id)
        broken = self._broken_rule(rollout, spec, devices)
        if broken is not None:
            logger.warning("rollout %s: aborted: %s", rollout.rollout_id, broken)
            self._revert(rollout, RolloutState.ABORTED, broken)
            return
        current = [d for d in devices if d.wave == rollout.wave]
        if any(d.state not in FINAL for d in current):
            return
        if rollout.wave_done_at is None:
            rollout.wave_done_at = now
            self._event(rollout, f"wave {rollout.wave + 1} finished; soaking {spec.soak_s:.0f} s")
            self.store.put(rollout)
            return
        if now - rollout.wave_done_at < spec.soak_s:
            return
        if any(d.wave > rollout.wave for d in devices):
            self._send_wave(rollout, rollout.wave + 1)
            return
        rollout.state = RolloutState.COMPLETED.value
        self._event(rollout, "completed")
        self.store.put(rollout)
        self._ended(RolloutState.COMPLETED)

    def _broken_rule(self, rollout: RolloutRow, spec: RolloutSpec, devices: list[DeviceRow]) -> Optional[str]:
        """The first abort rule broken, in words (``rule_checks`` shows each rule's value and bound)."""
        rules, values = spec.rules, self._rule_values(rollout, devices)
        if values["golden_failures"] > rules.max_golden_failures:  # the most specific reason first
            return f"{values['golden_failures']} devices failed the golden check (bound {rules.max_golden_failures})"
        if values["finished"] >= rules.min_devices and values["failure_share"] > rules.max_failure_share:
            return f"failure share {values['failure_share']:.0%} above {rules.max_failure_share:.0%}"
        new, old = values.get("updated"), values.get("reference")
        if not new or not old:
            return None
        rate, old_rate = new["escalation_rate"], old["escalation_rate"]
        if (
            rules.max_escalation_increase is not None
            and rate - old_rate >= rules.min_escalation_delta
            and rate > old_rate * (1 + rules.max_escalation_increase)
        ):
            return f"escalation rate {rate:.1%} on updated devices against {old_rate:.1%} on the others"
        if rules.max_confidence_drop is not None and old["confidence"] - new["confidence"] > rules.max_confidence_drop:
            return f"mean confidence {new['confidence']:.3f} on updated devices against {old['confidence']:.3f}"
        if (
            rules.max_latency_ratio is not None
            and old["p95_ms"] > 0
            and new["p95_ms"] > old["p95_ms"] * rules.max_latency_ratio
            and new["p95_ms"] - old["p95_ms"] >= rules.min_latency_delta_ms
        ):
            return f"p95 inference {new['p95_ms']:.2f} ms on updated devices against {old['p95_ms']:.2f} ms"
        return None

    def _rule_values(self, rollout: RolloutRow, devices: list[DeviceRow]) -> dict[str, Any]:
        finished = [d for d in devices if d.state in FINAL and d.state not in ("superseded", "reverted")]
        failed = [d for d in finished if d.state in FAILED]
        values: dict[str, Any] = {
            "finished": len(finished),
            "failure_share": len(failed) / len(finished) if finished else 0.0,
            "golden_failures": sum(d.reason == "golden_mismatch" for d in devices),
        }
        updated_ids = [d.device_id for d in devices if d.state == "active"]
        waiting_ids = [d.device_id for d in devices if d.state == "waiting"]
        least = RolloutSpec.model_validate(rollout.spec).rules.min_frames
        updated = [s for i in updated_ids if (dev := self.fleet.store.get(i)) and (s := signals(dev, least))]
        if updated:
            values["updated"] = {k: mean(updated, k) for k in updated[0]}
            others = [s for i in waiting_ids if (dev := self.fleet.store.get(i)) and (s := signals(dev, least))]
            if not others:  # the last wave: against the same devices before the rollout
                others = [rollout.baseline[i] for i in updated_ids if i in rollout.baseline]
            if others:
                values["reference"] = {k: mean(others, k) for k in others[0]}
        return values

    # -- sending and reverting ----------------------------------------------------------------------------------

    def _send_wave(self, rollout: RolloutRow, wave: int) -> None:
        now = self._clock()
        members = [d for d in self.store.devices(rollout.rollout_id) if d.wave == wave and d.state == "waiting"]
        started = [replace(d, state="pending", started_at=now, updated_at=now) for d in members]
        rollout.wave, rollout.wave_done_at = wave, None
        self._event(rollout, f"wave {wave + 1}: {len(started)} devices")
        self.store.put(rollout, started)
        target = {"bundle_id": rollout.spec["bundle_id"], "rollout_id": rollout.rollout_id}
        self.fleet.set_model([d.device_id for d in started], target)

    def _revert(self, rollout: RolloutRow, state: RolloutState, reason: str) -> RolloutRow:
        """Every device the rollout reached goes back to what it ran before; the rest are left alone."""
        reached = [d for d in self.store.devices(rollout.rollout_id) if d.state in REACHED]
        back = f"{rollout.rollout_id}:revert"
        for d in reached:
            model = (
                {"bundle_id": d.from_bundle, "rollout_id": back, "rollback": True}
                if d.from_bundle
                else {"own_model": True, "rollout_id": back}
            )
            self.fleet.set_model([d.device_id], model)
        rows = [replace(d, state="reverted", updated_at=self._clock()) for d in reached]
        rollout.state, rollout.reason = state.value, reason
        self._event(rollout, f"{state.value.lower()}: {reason}; {len(rows)} devices sent back")
        self.store.put(rollout, rows)
        self._ended(state)
        return rollout

    def _ended(self, state: RolloutState) -> None:
        if self._metrics is not None:
            self._metrics.rollouts.labels(state=state.value).inc()

    def _supersede(self, device_ids: list[str], by: str) -> None:
        wanted = set(device_ids)
        for older in self.store.rollouts((RolloutState.RUNNING.value, RolloutState.PAUSED.value)):
            taken = [
                replace(d, state="superseded", detail=f"taken over by {by}", updated_at=self._clock())
                for d in self.store.devices(older.rollout_id)
                if d.device_id in wanted and d.state not in FINAL
            ]
            if taken:
                self._event(older, f"{len(taken)} devices taken over by {by}")
                self.store.put(older, taken)

    # -- helpers ------------------------------------------------------------------------------------------------

    def reach(self, target: TargetSpec) -> set[str]:
        """The device groups a target can reach (what an operator's scope is checked against): its group, which
        bounds every other selector, else the groups of the devices it selects now."""
        if target.group:
            return {target.group}
        return {d.group for d in self._targets(target)}

    def groups(self, rollout_id: str) -> set[str]:
        """The device groups a rollout's devices are in."""
        devices = {row.device_id for row in self.store.devices(rollout_id)}
        return {d.group for d in self.fleet.store.devices() if d.device_id in devices}

    def _targets(self, target: TargetSpec) -> list[Device]:
        found = self.fleet.find(group=target.group, tag=target.tag, device_class=target.device_class)
        if target.devices:
            found = [d for d in found if d.device_id in set(target.devices)]
        return found

    def _get(self, rollout_id: str) -> RolloutRow:
        rollout = self.store.get(rollout_id)
        if rollout is None:
            raise RolloutNotFound(f"no rollout {rollout_id}")
        return rollout

    def _set_state(
        self, rollout_id: str, who: str, state: RolloutState, from_states: tuple[RolloutState, ...]
    ) -> RolloutRow:
        with self._lock:
            rollout = self._get(rollout_id)
            if rollout.state not in {s.value for s in from_states}:
                raise RolloutError(f"rollout {rollout_id} is {rollout.state}")
            rollout.state = state.value
            self._event(rollout, f"{state.value.lower()} by {who}")
            self.store.put(rollout)
        self.fleet.store.audit(self._clock(), who, f"rollout_{state.value.lower()}", rollout_id, {})
        return rollout

    def _event(self, rollout: RolloutRow, what: str) -> None:
        now = self._clock()
        rollout.timeline.append({"at": now, "t_s": round(now - rollout.created_at, 3), "event": what})
        rollout.updated_at = now
        logger.info("rollout %s: %s", rollout.rollout_id, what)


def rule_checks(rules: Rules, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Each abort rule's current value against its bound, as the console shows them: ``value`` None until there
    is something to compare (quality rules: updated devices and a reference). The bounds are those
    ``RolloutService._broken_rule`` applies, before its minimum-delta and minimum-count conditions."""
    new, old = values.get("updated"), values.get("reference")
    checks = [
        {"rule": "golden failures", "value": values["golden_failures"], "bound": rules.max_golden_failures},
        {
            "rule": "failure share",
            "value": values["failure_share"] if values["finished"] >= rules.min_devices else None,
            "bound": rules.max_failure_share,
        },
    ]
    if rules.max_escalation_increase is not None:
        bound = old["escalation_rate"] * (1 + rules.max_escalation_increase) if old else None
        checks.append({"rule": "escalation rate", "value": new and new["escalation_rate"], "bound": bound})
    if rules.max_confidence_drop is not None:
        drop = old["confidence"] - new["confidence"] if new and old else None
        checks.append({"rule": "confidence drop", "value": drop, "bound": rules.max_confidence_drop})
    if rules.max_latency_ratio is not None:
        bound = old["p95_ms"] * rules.max_latency_ratio if old else None
        checks.append({"rule": "p95 inference ms", "value": new and new["p95_ms"], "bound": bound})
    for check in checks:
        value, bound = check["value"], check["bound"]
        check["over"] = value is not None and bound is not None and value > bound
    return checks
