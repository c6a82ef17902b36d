"""``tools/bench orchestrator``: the replay harness. Every scenario of ``replay.py`` runs against each policy, and
the policies are compared side by side:

    none                   no orchestrator: the baseline
    rules                  the deterministic controller alone
    rules+llm              rules, and the embedded SmolLM2-135M-Instruct for what they leave
    rules+endpoint         rules, and the OpenAI-compatible endpoint of --endpoint or $TANDEM_LLM_ENDPOINT
                           (a JSON line saying "skipped" when none is given)
    rules+llm-every-round  (on request) the embedded model asked every round, as a naive agent would be

Per policy, over all scenarios: slo_violations (seconds with the strong model's p99 above 1 s), cost (model calls
x their cost), accuracy (share of frames whose final answer is right), escalations, unsafe_blocked (proposals the
guardrails refused, malformed answers included), unsafe_applied (applied actions that broke one of the
harness's own invariants), nofault_actions (actions applied in the no-fault scenarios; the goal is 0),
budget_overrun_s, llm_calls and the decision cache's hit rate. Time is simulated: a round waits for the language
model, so its speed changes how long the bench takes, not its figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from cloud.metrics import HubMetrics
from cloud.orchestrator.advisor import Advisor, ChatEndpoint, EmbeddedLlama
from cloud.orchestrator.config import Bounds, LlmConfig, OrchestratorConfig, Watched
from cloud.orchestrator.loop import Orchestrator
from cloud.orchestrator.store import OrchestratorStore, ProposalState
from tools.bench_suite.replay import (
    DURATION_S,
    SCENARIOS,
    STRONG,
    WEAK,
    Curve,
    Scenario,
    Sim,
    SimActuator,
    SimObserver,
    capacity_for,
    fleet,
    natural_cost_per_hour,
    real_curve,
)

DEMO = Path(".tandem/demo")
DEFAULT_POLICIES = ["none", "rules", "rules+llm", "rules+endpoint"]
ALL_POLICIES = [*DEFAULT_POLICIES, "rules+llm-every-round"]
EVERY_S = 5
BOUNDS = Bounds(threshold_min=0.5, max_fleet_share=0.6, actions_per_minute=12)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="one JSON line per policy")
    parser.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help=f"any of {ALL_POLICIES}")
    parser.add_argument("--scenarios", default=",".join(s.name for s in SCENARIOS))
    parser.add_argument("--endpoint", default=os.environ.get("TANDEM_LLM_ENDPOINT"), help="OpenAI-compatible base URL")
    parser.add_argument("--endpoint-model", default=os.environ.get("TANDEM_LLM_MODEL", "default"))
    parser.add_argument(
        "--endpoint-format",
        choices=["json_schema", "json_object"],
        default="json_schema",
        help="json_object for llama-cpp-python's server (orchestrator.llm.response_format)",
    )


def _config(policy: str, capacity: float, budget: Optional[float]) -> OrchestratorConfig:
    """The orchestrator's settings for one policy (its language model is built by _advisor)."""
    llm = LlmConfig(enabled=policy.startswith("rules+"), timeout_s=120)
    return OrchestratorConfig(
        mode="auto",
        every_s=EVERY_S,
        watch=[Watched(model=STRONG, capacity_per_s=capacity, p99_slo_ms=1000.0, cheaper=WEAK)],
        cooldown_s=10.0,
        effect_after_s=30.0,
        cost_budget_per_hour=budget,
        bounds=BOUNDS.model_copy(update={"cost_budget_max": budget}),
        llm=llm,
    )


class _EveryRound(Orchestrator):
    """The naive agent: the language model asked every round, anomaly or not."""

    async def tick(self):  # type: ignore[no-untyped-def]
        report = await super().tick()
        if not report.llm and self.advisor is not None:
            snapshot = report.snapshot
            proposals, report.llm = await self._advise(snapshot, "Check the system and act if needed.", "llm")
            checks = self.guard.round()
            for proposal in proposals:
                row = await self._handle(proposal, snapshot, None, checks)
                if row is not None:
                    report.rows.append(row)
        return report


async def play(
    scenario: Scenario, policy: str, advisor: Optional[Advisor], curve: Curve, folder: Path
) -> dict[str, Any]:
    capacity = capacity_for(curve)
    budget = natural_cost_per_hour(curve) * scenario.budget_share if scenario.budget_share else None
    sim = Sim(curve, fleet(), capacity, budget)
    config = _config(policy, capacity, budget)
    store = OrchestratorStore(folder / f"{policy}-{scenario.name}.db")
    store.open()
    actuator = SimActuator(sim, config.bounds)
    metrics = HubMetrics()
    kind = _EveryRound if policy == "rules+llm-every-round" else Orchestrator
    orchestrator = kind(config, SimObserver(sim), actuator, store, metrics, advisor, clock=lambda: sim.now)
    if policy != "none":
        await orchestrator.start()
    for second in range(DURATION_S):
        scenario.script(sim)
        sim.step()
        if policy != "none" and second % EVERY_S == EVERY_S - 1:
            await orchestrator.tick()
    rows = store.proposals(limit=100_000)
    store.close()
    outcomes = ("answered", "cached", "malformed", "unavailable")
    llm = {k: metrics.orchestrator_llm.labels(outcome=k)._value.get() for k in outcomes}
    return {
        "totals": sim.totals,
        "applied": [x for x in actuator.applied if x.tool != "annotate"],
        "blocked": sum(1 for r in rows if r.state is ProposalState.BLOCKED),
        "unsafe_applied": len(actuator.unsafe),
        "llm": llm,
    }


def _advisor(policy: str, args: argparse.Namespace) -> Optional[Advisor]:
    if policy in ("rules+llm", "rules+llm-every-round"):
        return EmbeddedLlama(LlmConfig(threads=2, timeout_s=120))
    if policy == "rules+endpoint" and args.endpoint:
        llm = LlmConfig(endpoint=args.endpoint, model=args.endpoint_model, response_format=args.endpoint_format,
                        timeout_s=120)  # fmt: skip
        return ChatEndpoint(llm)
    return None


def run_policy(policy: str, scenarios: list[Scenario], curve: Curve, args: argparse.Namespace) -> dict[str, Any]:
    if policy == "rules+endpoint" and not args.endpoint:
        return {"policy": policy, "skipped": "no endpoint: give --endpoint URL or $TANDEM_LLM_ENDPOINT"}
    advisor = _advisor(policy, args)
    started = time.monotonic()
    per: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for scenario in scenarios:
            per[scenario.name] = asyncio.run(play(scenario, policy, advisor, curve, Path(folder)))
    if advisor is not None:
        advisor.close()
    totals = [p["totals"] for p in per.values()]
    llm_calls = int(sum(p["llm"]["answered"] + p["llm"]["malformed"] for p in per.values()))
    cached = sum(p["llm"]["cached"] for p in per.values())
    return {
        "policy": policy,
        "slo_violations": sum(t.slo_violation_s for t in totals),
        "cost": round(sum(t.cost for t in totals), 3),
        "accuracy": round(sum(t.right for t in totals) / sum(t.frames for t in totals), 5),
        "escalations": round(sum(t.escalations for t in totals)),
        "unsafe_blocked": sum(p["blocked"] for p in per.values()),
        "unsafe_applied": sum(p["unsafe_applied"] for p in per.values()),
        "nofault_actions": sum(len(p["applied"]) for s, p in per.items() if not _scenario(s).fault),
        "actions": sum(len(p["applied"]) for p in per.values()),
        "budget_overrun_s": sum(t.budget_overrun_s for t in totals),
        "llm_calls": llm_calls,
        "llm_unavailable": int(sum(p["llm"]["unavailable"] for p in per.values())),
        "cache_hit_rate": round(cached / (cached + llm_calls), 3) if cached + llm_calls else 0.0,
        "wall_s": round(time.monotonic() - started, 1),
        "scenarios": {
            s: {
                "slo_violations": p["totals"].slo_violation_s,
                "cost": round(p["totals"].cost, 3),
                "accuracy": round(p["totals"].right / p["totals"].frames, 5),
                "actions": len(p["applied"]),
                "blocked": p["blocked"],
            }
            for s, p in per.items()
        },
    }


def _scenario(name: str) -> Scenario:
    return next(s for s in SCENARIOS if s.name == name)


COLUMNS = ("slo_violations", "cost", "accuracy", "escalations", "unsafe_blocked", "unsafe_applied",
           "nofault_actions", "budget_overrun_s", "llm_calls", "cache_hit_rate")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    policies = [p for p in args.policies.split(",") if p]
    unknown = sorted(set(policies) - set(ALL_POLICIES))
    if unknown:
        raise SystemExit(f"unknown policies {unknown}; the policies are {ALL_POLICIES}")
    scenarios = [_scenario(n) for n in args.scenarios.split(",") if n]
    curve = real_curve(DEMO)
    results = [run_policy(p, scenarios, curve, args) for p in policies]
    print(f"{'policy':<22}" + "".join(f"{c:>17}" for c in COLUMNS))
    for r in results:
        cells = "".join(f"{r[c]!s:>17}" for c in COLUMNS) if "skipped" not in r else f"  skipped: {r['skipped']}"
        print(f"{r['policy']:<22}{cells}")
    print(f"\n{len(scenarios)} scenarios x {DURATION_S} s; per scenario (slo_violations / accuracy / actions):")
    for r in results:
        if "skipped" not in r:
            cells = "  ".join(
                f"{s}={v['slo_violations']}/{v['accuracy']:.4f}/{v['actions']}" for s, v in r["scenarios"].items()
            )
            print(f"  {r['policy']:<22} {cells}")
    if args.json:
        for r in results:
            print(json.dumps(r))
    return 0
