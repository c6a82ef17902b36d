"""The orchestrator: every few seconds, snapshot -> rules -> (the language model, for what the rules left) ->
guardrails -> apply or propose -> audit; later, each applied action's measured effect.

    mode observe   every proposal is recorded (OBSERVED) and none applied
    mode approve   proposals wait (PROPOSED) for ``approve`` or ``reject``; approval checks the bounds again
    mode auto      applied at once, within the bounds
    intents        an operator's words -> the language model's proposals, always waiting for approval
    revert         any applied action, undone in one step

The rules are the controller; the language model is consulted only for an anomaly the rules did not act on
(an SLO breach with every rule at its bound, a failing model with no other replica, a cost overrun the
thresholds cannot fix) or an operator's intent, and its answer is cached by the situation's fingerprint. When
it is slow, down or wrong, the rules' decisions stand: no tick waits on it longer than ``llm.timeout_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Optional

from cloud.errors import ActionFailed, InvalidAction, OrchestratorError
from cloud.metrics import HubMetrics
from cloud.orchestrator import actions as a
from cloud.orchestrator.actuator import Actuator, Undo
from cloud.orchestrator.advisor import Advisor, AdvisorUnavailable, prompt, prompt_hash
from cloud.orchestrator.cache import DecisionCache, fingerprint
from cloud.orchestrator.config import Mode, OrchestratorConfig
from cloud.orchestrator.guardrails import Guard, Round
from cloud.orchestrator.rules import Proposal, Rules
from cloud.orchestrator.snapshot import Observer, Snapshot
from cloud.orchestrator.store import OrchestratorStore, ProposalRow, ProposalState

logger = logging.getLogger(__name__)

BUDGET_KEY = "cost_budget_per_hour"


@dataclass
class TickReport:
    """What one round did (for the demo's printout, the replay harness and tests)."""

    snapshot: Snapshot
    rows: list[ProposalRow] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)
    llm: str = ""  # answered, cached, malformed, unavailable, busy; empty: not consulted


class Orchestrator:
    def __init__(
        self,
        config: OrchestratorConfig,
        observer: Observer,
        actuator: Actuator,
        store: OrchestratorStore,
        metrics: HubMetrics,
        advisor: Optional[Advisor] = None,
        *,
        clock: Callable[[], float] = time.time,
        on_decision: Callable[[ProposalRow], None] = lambda _row: None,
    ) -> None:
        """``on_decision``: told of every proposal as it is decided (the demo prints them)."""
        self.config = config
        self.observer = observer
        self.actuator = actuator
        self.store = store
        self.metrics = metrics
        self.advisor = advisor
        self.guard = Guard(config.bounds)
        self.cache = DecisionCache(config.decision_cache_size)
        self.clock = clock
        self.on_decision = on_decision
        self.rules: Optional[Rules] = None
        self.llm_state = "off" if advisor is None else "not started"
        self._llm_call: Optional[asyncio.Future[str]] = None  # the question being answered, if any
        self._last_llm: dict[str, Any] = {}  # the last consultation: prompt hash, raw answer, validation
        self._acted: dict[str, float] = {}  # target -> when an action on it was last applied
        self.ticks = 0

    @property
    def budget(self) -> Optional[float]:
        found = self.store.memory().get(BUDGET_KEY)
        return float(found) if found is not None else self.config.cost_budget_per_hour

    async def start(self) -> None:
        """The rules' memory from the store; the language model loaded (if it cannot be, rules only)."""
        self.rules = Rules(self.config, self.store.memory())
        if self.advisor is not None:
            try:
                await asyncio.to_thread(self.advisor.start)
                self.llm_state = f"ready: {self.advisor.name}"
            except AdvisorUnavailable as exc:
                self.llm_state = f"unavailable: {exc}"
                logger.warning("orchestrator: no language model, rules only: %s", exc)
                self.advisor = None
        logger.info("orchestrator: mode %s, language model %s", self.config.mode.value, self.llm_state)

    async def close(self) -> None:
        if self.advisor is not None:
            await asyncio.to_thread(self.advisor.close)

    async def _observe(self) -> Snapshot:
        """The observer's snapshot with what the orchestrator itself holds: the budget and the watched models'
        capacity and SLO."""
        snapshot = await self.observer.observe()
        slo = {w.model: {"capacity_per_s": w.capacity_per_s, "p99_slo_ms": w.p99_slo_ms} for w in self.config.watch}
        return replace(snapshot, cost_budget_per_hour=self.budget, slo=slo)

    # -- one round --------------------------------------------------------------------------------------------

    async def tick(self) -> TickReport:
        if self.rules is None:
            raise OrchestratorError("the orchestrator is not started")
        snapshot = await self._observe()
        report = TickReport(snapshot)
        self.ticks += 1
        self.metrics.orchestrator_ticks.inc()
        self._expire(snapshot.at)
        await self._measure_effects(snapshot)
        checks = self.guard.round()
        decided = self.rules.decide(snapshot, self.budget)
        uncovered = self.rules.uncovered(snapshot, decided)
        report.anomalies = [u.text for u in uncovered]
        proposals = [p for p in decided if not self._cooling(p.action, snapshot.at)]
        if uncovered and self.advisor is not None:
            question = "Problems the rules could not fix: " + "; ".join(report.anomalies)
            advice, report.llm = await self._advise(snapshot, question, "llm", key=",".join(u.key for u in uncovered))
            proposals += advice
        tick_seq = self._audit_tick(snapshot, proposals, report) if proposals or report.llm else None
        seen: set[str] = set()
        for proposal in proposals:
            target = proposal.action.target() if not isinstance(proposal.action, dict) else "malformed"
            if target in seen and target != "malformed":
                continue  # one change per target per round; the rules' comes first
            seen.add(target)
            row = await self._handle(proposal, snapshot, tick_seq, checks)
            if row is not None:
                report.rows.append(row)
        return report

    def _cooling(self, action: Any, now: float) -> bool:
        return now - self._acted.get(action.target(), float("-inf")) < self.config.cooldown_s

    async def _advise(
        self, snapshot: Snapshot, question: str, source: str, key: Optional[str] = None
    ) -> tuple[list[Proposal], str]:
        """The language model's proposals for the question, through the decision cache (``key``: what the question
        asks, without its numbers; default the question itself). A malformed answer comes back as one proposal
        whose action is the raw text (a dict), which the guardrails block."""
        advisor = self.advisor
        if advisor is None:
            return [], ""
        messages = prompt(snapshot, self.config.bounds, question)
        key = fingerprint(snapshot, self.config, question if key is None else key)
        raw = self.cache.get(key)
        outcome = "cached"
        if raw is None:
            if self._llm_call is not None and not self._llm_call.done():
                self._count_llm("busy")  # an earlier question's thread still runs (it timed out): not asked again
                return [], "busy"
            call = self._llm_call = asyncio.ensure_future(
                asyncio.to_thread(advisor.complete, messages, a.decision_schema())
            )
            call.add_done_callback(lambda done: done.cancelled() or done.exception())  # read it, even if late
            try:
                raw = await asyncio.wait_for(asyncio.shield(call), self.config.llm.timeout_s)
            except (AdvisorUnavailable, asyncio.TimeoutError) as exc:
                self._count_llm("unavailable")
                logger.warning("orchestrator: the language model did not answer (%s); the rules' decisions stand",
                               str(exc) or "timed out")  # fmt: skip
                return [], "unavailable"
            self.cache.put(key, raw)
            outcome = "answered"
        self.metrics.orchestrator_cache_hit_rate.set(self.cache.hit_rate)
        self._last_llm = {"prompt_sha256": prompt_hash(messages), "raw": raw, "fingerprint": key}
        try:
            decision = a.parse_decision(raw)
        except a.Malformed as exc:
            outcome = "cached" if outcome == "cached" else "malformed"
            self._count_llm(outcome)
            self._last_llm["validation"] = f"malformed: {exc}"
            return [Proposal({"raw": raw[:2000]}, f"malformed answer: {exc}", source)], outcome
        self._count_llm(outcome)
        self._last_llm["validation"] = "ok"
        why = decision.explanation or question
        return [Proposal(action, why, source) for action in decision.actions], outcome

    def _count_llm(self, outcome: str) -> None:
        self.metrics.orchestrator_llm.labels(outcome=outcome).inc()

    def _audit_tick(self, snapshot: Snapshot, proposals: list[Proposal], report: TickReport) -> int:
        entry: dict[str, Any] = {"snapshot": snapshot.compact(), "anomalies": report.anomalies, "llm": report.llm}
        if report.llm and report.llm not in ("busy", "unavailable"):
            entry.update(self._last_llm)
        entry["proposed"] = len(proposals)
        return self.store.audit(snapshot.at, "tick", entry)

    # -- deciding one proposal --------------------------------------------------------------------------------

    async def _handle(
        self, proposal: Proposal, snapshot: Snapshot, tick_seq: Optional[int], checks: Round
    ) -> Optional[ProposalRow]:
        now = snapshot.at
        if isinstance(proposal.action, dict):  # a malformed answer: recorded, never applied
            return self._record(proposal, proposal.action, ProposalState.BLOCKED, proposal.reason, tick_seq, now)
        action = proposal.action
        problem = checks.check(action, snapshot)
        if problem:
            return self._record(proposal, a.dump(action), ProposalState.BLOCKED, problem, tick_seq, now)
        from_a_person = proposal.source.startswith(("intent", "operator"))
        waiting = from_a_person or self.config.mode is Mode.APPROVE
        if self.config.mode is Mode.OBSERVE and not from_a_person:
            return self._record(proposal, a.dump(action), ProposalState.OBSERVED, "", tick_seq, now)
        if waiting:
            if any(p.action.get("tool") != "annotate" and _target(p) == action.target()
                   for p in self.store.proposals((ProposalState.PROPOSED,))):  # fmt: skip
                return None  # one waiting proposal per target: the operator is asked once
            return self._record(proposal, a.dump(action), ProposalState.PROPOSED, "", tick_seq, now)
        row = self._record(proposal, a.dump(action), ProposalState.PROPOSED, "", tick_seq, now, announce=False)
        return await self._apply(row, action, snapshot, by=proposal.source)

    def _record(self, proposal: Proposal, action: Optional[dict[str, Any]], state: ProposalState, detail: str,
                tick_seq: Optional[int], now: float, announce: bool = True) -> ProposalRow:  # fmt: skip
        row = self.store.new_proposal(now, proposal.source, action or {}, proposal.reason, state, detail)
        self.store.audit(now, "proposal", {"tick": tick_seq, "proposal_id": row.proposal_id, "source": row.source,
                                           "action": row.action, "reason": row.reason, "state": state.value,
                                           "validation": detail or "ok", "applied": False})  # fmt: skip
        if announce:
            self._announce(row)
        return row

    def _announce(self, row: ProposalRow) -> None:
        self.metrics.orchestrator_proposals.labels(source=row.source.split(":")[0], state=row.state.value).inc()
        self.on_decision(row)

    async def _apply(self, row: ProposalRow, action: Any, snapshot: Snapshot, by: str) -> ProposalRow:
        now = self.clock()
        limited = self.guard.rate_allows(now) if not isinstance(action, a.Annotate) else None
        try:
            if limited:
                raise _Refused(limited)
            undo = await self._execute(action)
        except _Refused as exc:
            row.state, row.detail = ProposalState.BLOCKED, str(exc)
        except ActionFailed as exc:
            row.state, row.detail = ProposalState.FAILED, str(exc)
            logger.warning("orchestrator: %s failed: %s", action.describe(), exc)
        else:
            if not isinstance(action, a.Annotate):
                self.guard.applied(now)
            self._acted[action.target()] = now
            if self.rules is not None:
                self.rules.applied(action, snapshot)
            row.state, row.applied_at, row.undo = ProposalState.APPLIED, now, undo
            row.before = measure(snapshot, action, self.config)
        self.store.put(row)
        self.store.audit(now, "decision", {"proposal_id": row.proposal_id, "action": row.action, "by": by,
                                           "state": row.state.value, "detail": row.detail,
                                           "applied": row.state is ProposalState.APPLIED})  # fmt: skip
        self._announce(row)
        return row

    async def _execute(self, action: Any) -> Optional[Undo]:
        if isinstance(action, a.SetCostBudget):
            old = self.budget
            self.store.memory()[BUDGET_KEY] = action.per_hour
            return {"cost_budget": old}
        return await self.actuator.apply(action)

    # -- operators --------------------------------------------------------------------------------------------

    async def intent(self, text: str, who: str) -> list[ProposalRow]:
        """An operator's intent in plain words -> proposals that wait for approval (a policy diff to review)."""
        if self.advisor is None:
            raise OrchestratorError(f"intents need the language model, which is {self.llm_state}")
        snapshot = await self._observe()
        self.store.audit(snapshot.at, "intent", {"by": who, "text": text})
        proposals, outcome = await self._advise(snapshot, f"Operator's intent: {text}", f"intent:{who}")
        if outcome in ("busy", "unavailable"):
            raise OrchestratorError(f"the language model is {outcome}; try again")
        tick_seq = self._audit_tick(snapshot, proposals, TickReport(snapshot, llm=outcome))
        checks = self.guard.round()
        rows = [await self._handle(p, snapshot, tick_seq, checks) for p in proposals]
        return [r for r in rows if r is not None]

    async def propose(self, action: dict[str, Any], reason: str, who: str) -> ProposalRow:
        """An operator's own action, through the same guardrails; it waits for approval like any proposal."""
        try:
            parsed = a.parse_action(action)
        except ValueError as exc:
            raise InvalidAction(f"not one of the orchestrator's tools ({', '.join(a.TOOLS)}): {exc}") from exc
        snapshot = await self._observe()
        proposal = Proposal(parsed, reason or f"proposed by {who}", f"operator:{who}")
        row = await self._handle(proposal, snapshot, None, self.guard.round())
        if row is None:
            raise OrchestratorError(f"a proposal for {parsed.target()} already waits for approval")
        return row

    async def snapshot(self) -> dict[str, Any]:
        """What the orchestrator sees now."""
        return (await self._observe()).compact()

    async def approve(self, proposal_id: str, who: str) -> ProposalRow:
        row = self._waiting(proposal_id, "approve")
        snapshot = await self._observe()
        action = a.parse_action(row.action)
        problem = self.guard.check(action, snapshot)  # the world may have moved since it was proposed
        row.decided_by, row.decided_at = who, self.clock()
        if problem:
            row.state, row.detail = ProposalState.BLOCKED, f"at approval: {problem}"
            self.store.put(row)
            self.store.audit(row.decided_at, "approval", {"proposal_id": proposal_id, "by": who, "blocked": problem})
            self._announce(row)
            return row
        return await self._apply(row, action, snapshot, by=who)

    async def reject(self, proposal_id: str, who: str) -> ProposalRow:
        row = self._waiting(proposal_id, "reject")
        row.state, row.decided_by, row.decided_at = ProposalState.REJECTED, who, self.clock()
        self.store.put(row)
        self.store.audit(row.decided_at, "rejection", {"proposal_id": proposal_id, "by": who})
        self._announce(row)
        return row

    async def revert(self, proposal_id: str, who: str) -> ProposalRow:
        """Undo an applied action: the state before it, whatever proposed it."""
        row = self.store.get(proposal_id)
        if row.state is not ProposalState.APPLIED:
            raise OrchestratorError(f"proposal {proposal_id} is {row.state.value}; only an applied one reverts")
        if row.undo is None:
            raise OrchestratorError(f"{row.action.get('tool')} cannot be undone")
        undo = row.undo
        if "group_settings" in undo:
            await self.actuator.restore_group(undo["group_settings"]["group"], undo["group_settings"]["settings"])
        elif "cost_budget" in undo:
            memory = self.store.memory()
            if undo["cost_budget"] is None:
                memory.pop(BUDGET_KEY, None)
            else:
                memory[BUDGET_KEY] = undo["cost_budget"]
        else:
            await self.actuator.apply(a.parse_action(undo["action"]))
        row.state, row.decided_by, row.decided_at = ProposalState.REVERTED, who, self.clock()
        self.store.put(row)
        self.store.audit(row.decided_at, "revert", {"proposal_id": proposal_id, "by": who, "undo": undo})
        self._announce(row)
        return row

    def _waiting(self, proposal_id: str, step: str) -> ProposalRow:
        row = self.store.get(proposal_id)
        if row.state is not ProposalState.PROPOSED:
            raise OrchestratorError(f"proposal {proposal_id} is {row.state.value}; only a waiting one can {step}")
        return row

    # -- housekeeping -----------------------------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for row in self.store.proposals((ProposalState.PROPOSED,)):
            if now - row.created_at > self.config.proposal_ttl_s:
                row.state, row.detail = ProposalState.EXPIRED, "no operator decided in time"
                self.store.put(row)

    async def _measure_effects(self, snapshot: Snapshot) -> None:
        """Applied actions old enough: their measured effect, beside what was measured before."""
        for row in self.store.proposals((ProposalState.APPLIED,), limit=50):
            if row.effect is None and row.applied_at and snapshot.at - row.applied_at >= self.config.effect_after_s:
                try:
                    action = a.parse_action(row.action)
                except ValueError:
                    continue
                row.effect = {"after_s": round(snapshot.at - row.applied_at, 1),
                              "after": measure(snapshot, action, self.config)}  # fmt: skip
                self.store.put(row)
                self.store.audit(snapshot.at, "effect", {"proposal_id": row.proposal_id, "before": row.before,
                                                         "after": row.effect["after"]})  # fmt: skip

    def status(self) -> dict[str, Any]:
        return {
            "mode": self.config.mode.value,
            "ticks": self.ticks,
            "llm": self.llm_state,
            "decision_cache": {"hits": self.cache.hits, "misses": self.cache.misses, "hit_rate": self.cache.hit_rate},
            "cost_budget_per_hour": self.budget,
            "proposals": self.store.counts(),
            "memory": dict(self.store.memory()),
        }


class _Refused(Exception):
    pass


def _target(row: ProposalRow) -> str:
    try:
        return str(a.parse_action(row.action).target())
    except ValueError:
        return ""


def measure(snapshot: Snapshot, action: Any, config: OrchestratorConfig) -> dict[str, Any]:
    """The numbers an action is meant to move, for its before/after."""
    found: dict[str, Any] = {"cost_per_hour": round(snapshot.cost_per_hour, 3)}
    for watched in config.watch:
        model = snapshot.models.get(watched.model)
        if model is not None:
            found[watched.model] = {"calls_per_s": round(model.calls_per_s, 3), "p99_ms": model.p99_ms,
                                    "error_rate": round(model.error_rate, 3)}  # fmt: skip
    if isinstance(action, a.SetJudgeThreshold) and action.group in snapshot.groups:
        group = snapshot.groups[action.group]
        found[f"group:{action.group}"] = {"escalations_per_s": round(group.escalations_per_s, 3),
                                          "judge_threshold": group.judge_threshold}  # fmt: skip
    if isinstance(action, a.SetCircuit) and action.model in snapshot.models:
        found[f"model:{action.model}"] = {"error_rate": round(snapshot.models[action.model].error_rate, 3)}
    return found
