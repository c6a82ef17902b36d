"""Thin adapters from gRPC and HTTP onto ``cloud.escalations.EscalationService``."""
