"""Routing: rules (config), replica choice and circuit breaking (balance), strategies (router), answers (aggregate)."""

from cloud.routing.config import RoutingConfig, load_routing, parse_routing, single_model_routing
from cloud.routing.router import Router
from cloud.routing.steps import ModelAnswer, ModelBackend, Outcome, Plan

__all__ = [
    "ModelAnswer",
    "ModelBackend",
    "Outcome",
    "Plan",
    "Router",
    "RoutingConfig",
    "load_routing",
    "parse_routing",
    "single_model_routing",
]
