"""Routing without Ray: rules, strategies, aggregation, the breaker, replica choice and the cache, on fake replicas."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from cloud.errors import ModelUnavailable, NoRoute, RoutingError
from cloud.routing import ModelAnswer, ModelBackend, Router, parse_routing
from cloud.routing.aggregate import max_confidence, vote, weighted
from cloud.routing.backends import ParserBackend
from cloud.routing.balance import Balancer, CircuitState
from cloud.routing.cache import CachedAnswer, ResultCache
from cloud.routing.config import Balancing, Breaker, Cache, ParserModelEntry
from cloud.routing.steps import so_far
from protocol import EncodedImage, EscalationRequest, Prediction, new_trace_id
from protocol.errors import MalformedMessage
from protocol.messages import Box

LABELS = ("cat", "dog", "fox", "c4t")


def answer(model: str, label: str, confidence: float) -> Prediction:
    rest = (1.0 - confidence) / (len(LABELS) - 1)
    return Prediction(model, "1", LABELS, tuple(confidence if lab == label else rest for lab in LABELS))


class FakeReplica(ModelBackend):
    """Answers with a fixed label and confidence, after a delay; or fails, or never answers."""

    def __init__(
        self, name: str, label: str = "cat", confidence: float = 0.9, *, fail: bool = False, delay_s: float = 0.0
    ) -> None:
        self.name, self.label, self.confidence, self.fail, self.delay_s = name, label, confidence, fail, delay_s
        self.calls = 0

    async def predict(self, request, previous):
        self.calls += 1
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError(f"{self.name} is down")
        return ModelAnswer(answer(self.name, self.label, self.confidence))


def request(
    hint: str = "",
    device: str = "cam-1",
    confidence: float = 0.6,
    data: bytes = b"png",
    attributes: dict[str, str] | None = None,
) -> EscalationRequest:
    return EscalationRequest(
        new_trace_id(),
        device,
        answer("weak", "cat", confidence),
        EncodedImage("image/png", data, 1, 1),
        deadline_ms=10_000,
        model_hint=hint,
        attributes=attributes or {},
    )


def rules(routes: list[dict], models: tuple[str, ...] = ("a", "b", "c"), **extra) -> dict:
    return {"models": {m: {"path": f"{m}.onnx"} for m in models}, "routes": routes, **extra}


def router(routes: list[dict], replicas: dict[str, FakeReplica], seed: int = 0, **extra) -> Router:
    config = parse_routing(rules(routes, **extra))
    backends = {name: {"serve": replicas[name]} for name in config.models if name in replicas}
    for name, entry in config.models.items():
        if isinstance(entry, ParserModelEntry):
            backends[name] = {"rule": ParserBackend(name, entry)}
    return Router(config, backends, rng=random.Random(seed))


def run(r: Router, req: EscalationRequest | None = None):
    req = req or request()
    return asyncio.run(r.run(r.plan(req), req))


# -- rules ---------------------------------------------------------------------------------------------------------


def test_bad_rules_are_refused_with_every_problem_named():
    with pytest.raises(RoutingError) as err:
        parse_routing(
            rules(
                [
                    {"name": "x", "strategy": "cascade", "steps": [{"model": "a"}]},
                    {"name": "y", "steps": [{"model": "nope"}]},
                    {"name": "z", "strategy": "parallel", "steps": [{"model": "a"}, {"model": "b"}]},
                ]
            )
        )
    text = str(err.value)
    assert "cascade takes 2-16 steps" in text
    assert "parallel needs aggregate" in text


def test_unknown_model_and_misplaced_parser_are_refused():
    raw = rules([{"name": "y", "steps": [{"model": "nope"}]}, {"name": "p", "steps": [{"model": "plate"}]}])
    raw["models"]["plate"] = {"kind": "parser", "pattern": "[A-Z]{3}"}
    with pytest.raises(RoutingError) as err:
        parse_routing(raw)
    assert "'nope', not under models" in str(err.value)
    assert "plate is a parser" in str(err.value)


def test_first_matching_rule_wins_on_every_condition():
    routes = [
        {"name": "hint", "when": {"model_hint": ["ocr"]}, "steps": [{"model": "a"}]},
        {"name": "group", "when": {"device_id": ["gate-*"], "tags": {"site": "north"}}, "steps": [{"model": "a"}]},
        {"name": "unsure", "when": {"local_confidence_below": 0.35, "local_label": ["cat"]}, "steps": [{"model": "b"}]},
        {"name": "big", "when": {"input_bytes_above": 10}, "steps": [{"model": "c"}]},
        {"name": "rest", "steps": [{"model": "b"}]},
    ]
    r = router(routes, {})
    assert r.plan(request(hint="ocr")).route.name == "hint"
    assert r.plan(request(device="gate-3", attributes={"site": "north"})).route.name == "group"
    assert r.plan(request(device="gate-3", attributes={"site": "south"})).route.name == "rest"
    assert r.plan(request(confidence=0.34)).route.name == "unsure"
    assert r.plan(request(data=b"x" * 11)).route.name == "big"
    assert r.plan(request()).route.name == "rest"


def test_no_matching_rule_is_a_named_error():
    r = router([{"name": "only-ocr", "when": {"model_hint": ["ocr"]}, "steps": [{"model": "a"}]}], {})
    with pytest.raises(NoRoute):
        r.plan(request(hint="digits"))


# -- strategies ----------------------------------------------------------------------------------------------------


def test_single_answers_with_its_model_and_costs_its_price():
    raw = rules([{"name": "r", "steps": [{"model": "a"}]}])
    raw["models"]["a"]["cost_per_1k"] = 2.0
    config = parse_routing(raw)
    r = Router(config, {"a": {"serve": FakeReplica("a", "dog")}, "b": {}, "c": {}})
    outcome = run(r)
    assert (outcome.final.label, outcome.final.model_id, outcome.cost) == ("dog", "aggregate:single", 0.002)


def test_fallback_tries_the_next_model_when_one_fails():
    replicas = {"a": FakeReplica("a", fail=True), "b": FakeReplica("b", "dog")}
    outcome = run(router([{"name": "r", "strategy": "fallback", "steps": [{"model": "a"}, {"model": "b"}]}], replicas))
    assert outcome.final.label == "dog" and [s.answer is None for s in outcome.steps] == [True, False]


def test_first_success_takes_the_quickest_answer_and_cancels_the_rest():
    replicas = {"a": FakeReplica("a", "cat", delay_s=5), "b": FakeReplica("b", "dog", delay_s=0.01)}
    r = router([{"name": "r", "strategy": "first_success", "steps": [{"model": "a"}, {"model": "b"}]}], replicas)
    outcome = run(r)
    assert outcome.final.label == "dog"
    assert r.balancer.stats("a", "serve").in_flight == 0  # the cancelled call was released


def test_cascade_stops_at_the_gate_and_climbs_below_it():
    steps = [{"model": "a"}, {"model": "b"}]
    sure = {"a": FakeReplica("a", "cat", 0.95), "b": FakeReplica("b", "dog", 0.99)}
    run(router([{"name": "r", "strategy": "cascade", "gate": 0.9, "steps": steps}], sure))
    assert (sure["a"].calls, sure["b"].calls) == (1, 0)
    unsure = {"a": FakeReplica("a", "cat", 0.5), "b": FakeReplica("b", "dog", 0.99)}
    outcome = run(router([{"name": "r", "strategy": "cascade", "gate": 0.9, "steps": steps}], unsure))
    assert outcome.final.label == "dog" and unsure["b"].calls == 1


def test_cascade_keeps_the_cheap_answer_when_a_soft_stronger_step_fails():
    steps = [{"model": "a"}, {"model": "b", "required": False}]
    replicas = {"a": FakeReplica("a", "cat", 0.5), "b": FakeReplica("b", fail=True)}
    outcome = run(router([{"name": "r", "strategy": "cascade", "steps": steps}], replicas))
    assert outcome.final.label == "cat"


def test_weighted_splits_traffic_by_weight():
    steps = [{"model": "a", "weight": 9}, {"model": "b", "weight": 1}]
    r = router([{"name": "canary", "strategy": "weighted", "steps": steps}], {})
    picked = [r.plan(request()).steps[0].model for _ in range(2000)]
    assert 0.85 < picked.count("a") / 2000 < 0.95


def test_parallel_hard_failure_fails_soft_failure_is_left_out():
    replicas = {"a": FakeReplica("a", "cat"), "b": FakeReplica("b", fail=True), "c": FakeReplica("c", "cat")}
    soft = [{"model": "a"}, {"model": "b", "required": False}, {"model": "c"}]
    outcome = run(router([{"name": "r", "strategy": "parallel", "aggregate": "vote", "steps": soft}], replicas))
    assert outcome.final.label == "cat" and outcome.final.scores[0] == 1.0
    hard = [{"model": "a"}, {"model": "b"}]
    outcome = run(router([{"name": "r", "strategy": "parallel", "aggregate": "vote", "steps": hard}], replicas))
    assert outcome.final is None and "b is down" in outcome.error


def test_chain_feeds_each_answer_to_the_next_step():
    raw_routes = [
        {"name": "plate", "strategy": "parallel", "aggregate": "chain", "steps": [{"model": "a"}, {"model": "format"}]}
    ]
    extra_model = {"kind": "parser", "pattern": "[a-z]{3}"}
    for label, expected in (("cat", ("cat", 0.9)), ("c4t", ("invalid", 0.0))):
        raw = rules(raw_routes)
        raw["models"]["format"] = extra_model
        config = parse_routing(raw)
        r = Router(
            config,
            {
                "a": {"serve": FakeReplica("a", label)},
                "format": {"rule": ParserBackend("format", config.models["format"])},
            },
        )
        outcome = run(r)
        assert (outcome.final.label, round(outcome.final.confidence, 3)) == expected
        assert [s.step.model for s in outcome.steps] == ["a", "format"]


def test_a_hub_step_after_one_that_found_boxes_reads_that_answer():
    """A chain of models (a text detector, then a recogniser) is allowed, and the later model is handed the
    earlier one's boxes where the device's answer was (``so_far``); an answer without boxes changes nothing."""
    chain = [{"name": "read", "strategy": "parallel", "aggregate": "chain", "steps": [{"model": "a"}, {"model": "b"}]}]
    assert [s.model for s in parse_routing(rules(chain)).routes[0].steps] == ["a", "b"]
    req = request()
    found = Prediction("finder", "1", ("text",), (0.8,), boxes=(Box(1, 2, 30, 12, "text", 0.8),))
    assert so_far(req, found).local_prediction is found and so_far(req, found).trace_id == req.trace_id
    assert so_far(req, Prediction("c", "1", ("cat",), (0.9,))) is req and so_far(req, None) is req


def test_a_step_deadline_times_the_request_out():
    replicas = {"a": FakeReplica("a", delay_s=5)}
    outcome = run(router([{"name": "r", "steps": [{"model": "a", "deadline_ms": 50}]}], replicas))
    assert outcome.final is None and outcome.timed_out


def test_retries_go_to_another_replica():
    class FirstCandidate(random.Random):
        """Always picks the first replica offered, so the broken one is tried first."""

        def choices(self, population, weights=None, **kwargs):
            return [population[0]]

        def choice(self, seq):
            return seq[0]

    config = parse_routing(rules([{"name": "r", "steps": [{"model": "a", "retries": 1}]}]))
    broken, healthy = FakeReplica("a", fail=True), FakeReplica("a", "dog")
    r = Router(config, {"a": {"one": broken, "two": healthy}}, rng=FirstCandidate())
    outcome = run(r)
    assert outcome.final.label == "dog" and outcome.steps[0].attempts == 2
    assert (broken.calls, healthy.calls) == (1, 1)  # tried, failed, and the retry went to the other replica


def test_bad_input_is_not_retried_and_not_held_against_the_replica():
    class Picky(FakeReplica):
        async def predict(self, request, previous):
            self.calls += 1
            raise MalformedMessage("not a PNG")

    picky = Picky("a")
    r = router([{"name": "r", "steps": [{"model": "a", "retries": 3}]}], {"a": picky})
    outcome = run(r)
    assert outcome.bad_input and picky.calls == 1
    assert r.balancer.stats("a", "serve").consecutive_failures == 0


# -- aggregation ---------------------------------------------------------------------------------------------------


def test_vote_max_confidence_and_weighted_combine_differently():
    answers = [(answer("a", "cat", 0.6), 1.0), (answer("b", "cat", 0.55), 1.0), (answer("c", "dog", 0.99), 5.0)]
    assert vote(answers).label == "cat" and vote(answers).confidence == pytest.approx(2 / 3)
    assert max_confidence(answers).label == "dog"
    assert weighted(answers).label == "dog"  # c's weight of 5 outvotes two unsure cats
    assert weighted(answers[:2]).label == "cat"


# -- balancing and the breaker -------------------------------------------------------------------------------------


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_breaker_opens_after_failures_rejects_then_probes_back():
    clock = Clock()
    b = Balancer(Balancing(), Breaker(failure_threshold=3, open_ms=1000), clock=clock)
    for _ in range(3):
        b.record("m", b.choose("m", ["r1"]), ok=False, latency_ms=1)
    assert b.stats("m", "r1").state is CircuitState.OPEN
    with pytest.raises(ModelUnavailable):
        b.choose("m", ["r1"])
    clock.now += 1.5
    assert b.choose("m", ["r1"]) == "r1"  # the one probe
    assert b.stats("m", "r1").state is CircuitState.HALF_OPEN
    with pytest.raises(ModelUnavailable):
        b.choose("m", ["r1"])  # no second call while the probe is out
    b.record("m", "r1", ok=True, latency_ms=1)
    assert b.stats("m", "r1").state is CircuitState.CLOSED


def test_a_failed_probe_opens_the_circuit_again():
    clock = Clock()
    b = Balancer(Balancing(), Breaker(failure_threshold=1, open_ms=1000), clock=clock)
    b.record("m", b.choose("m", ["r1"]), ok=False, latency_ms=1)
    clock.now += 2
    b.record("m", b.choose("m", ["r1"]), ok=False, latency_ms=1)
    assert b.stats("m", "r1").state is CircuitState.OPEN
    with pytest.raises(ModelUnavailable):
        b.choose("m", ["r1"])


def test_a_timeout_counts_against_a_replica_only_if_it_answered_nothing_meanwhile():
    """A slow request on a live replica (it answered other calls during the wait) is the request's fault;
    timeouts with no sign of life are a hung replica's, and open its circuit."""
    clock = Clock()
    b = Balancer(Balancing(), Breaker(failure_threshold=2, open_ms=1000), clock=clock)
    for _ in range(5):
        slow = b.choose("m", ["r1"])
        b.record("m", b.choose("m", ["r1"]), ok=True, latency_ms=5)  # another call answered during the wait
        clock.now += 2.0
        b.record_timeout("m", slow, waited_ms=2000)
    stats = b.stats("m", "r1")
    assert stats.state is CircuitState.CLOSED and stats.in_flight == 0
    assert stats.error_rate() > 0  # it still costs the replica some score
    for _ in range(2):
        hung = b.choose("m", ["r1"])
        clock.now += 2.0
        b.record_timeout("m", hung, waited_ms=2000)
    assert b.stats("m", "r1").state is CircuitState.OPEN


def test_faster_healthier_replica_gets_most_traffic():
    b = Balancer(Balancing(), Breaker(), clock=Clock(), rng=random.Random(3))
    for _ in range(20):
        b.record("m", b.choose("m", ["fast"], ()), ok=True, latency_ms=5)
        b.record("m", b.choose("m", ["slow"], ()), ok=True, latency_ms=50)
    scores = b.scores("m", ["fast", "slow"])
    # 0.5 x latency (1 vs 0.1) + 0.3 x throughput (equal) + 0.2 x load (equal)
    assert scores["fast"] == pytest.approx(1.0) and scores["slow"] == pytest.approx(0.55)
    picks = []
    for _ in range(1000):
        key = b.choose("m", ["fast", "slow"])
        b.release("m", key)
        picks.append(key)
    assert picks.count("fast") > picks.count("slow") * 1.5


def test_error_rate_lowers_a_replica_score():
    b = Balancer(Balancing(), Breaker(failure_threshold=100), clock=Clock())
    for ok in (True, False, True, False):
        b.record("m", b.choose("m", ["flaky"]), ok=ok, latency_ms=5)
        b.record("m", b.choose("m", ["steady"]), ok=True, latency_ms=5)
    scores = b.scores("m", ["flaky", "steady"])
    assert scores["flaky"] < scores["steady"] * 0.6


# -- cache ---------------------------------------------------------------------------------------------------------


def test_cache_key_follows_input_and_routing_decision_and_entries_expire():
    clock = Clock()
    r = router([{"name": "canary", "strategy": "weighted", "steps": [{"model": "a"}, {"model": "b"}]}], {})
    cache = ResultCache(Cache(ttl_s=10, max_entries=2), r.config.digest(), clock=clock)
    req = request()
    plan_a = next(p for p in (r.plan(req) for _ in range(50)) if p.steps[0].model == "a")
    plan_b = next(p for p in (r.plan(req) for _ in range(50)) if p.steps[0].model == "b")
    cache.put(cache.key(req, plan_a), CachedAnswer(answer("a", "cat", 0.9), ()))
    assert cache.get(cache.key(req, plan_a)) is not None
    assert cache.get(cache.key(req, plan_b)) is None  # the other arm of the A/B never reuses a's answer
    assert cache.get(cache.key(request(data=b"other"), plan_a)) is None
    assert cache.get(cache.key(req, plan_a, "another-tenant")) is None  # no tenant is answered from another's
    clock.now += 11
    assert cache.get(cache.key(req, plan_a)) is None
    for i in range(3):
        cache.put(f"k{i}", CachedAnswer(answer("a", "cat", 0.9), ()))
    assert len(cache) == 2


def test_a_sleeping_devices_cached_answers_are_released_and_the_others_stay():
    cache = ResultCache(Cache(ttl_s=60, max_entries=10), "digest")
    for i in range(3):
        cache.put(f"a{i}", CachedAnswer(answer("a", "cat", 0.9), (), device_id="cam-a"))
    cache.put("b0", CachedAnswer(answer("a", "dog", 0.9), (), device_id="cam-b"))
    assert cache.release("cam-a") == 3
    assert len(cache) == 1 and cache.get("b0") is not None
    assert cache.release("cam-a") == 0


def test_changed_rules_change_every_cache_key():
    one = parse_routing(rules([{"name": "r", "steps": [{"model": "a"}]}]))
    two = parse_routing(rules([{"name": "r", "steps": [{"model": "a", "deadline_ms": 10}]}]))
    assert one.digest() != two.digest()


def test_model_paths_in_a_rules_file_are_relative_to_it(tmp_path: Path):
    from cloud.routing import load_routing

    rules_file = tmp_path / "routing.yaml"
    rules_file.write_text("models: {m: {path: models/m.onnx}}\nroutes: [{name: r, steps: [{model: m}]}]\n")
    config = load_routing(rules_file)
    assert config.models["m"].path == (tmp_path / "models" / "m.onnx").resolve()
