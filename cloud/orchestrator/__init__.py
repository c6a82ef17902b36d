"""The orchestrator: rules that steer the hub and the fleet minute by minute, a language model for what the
rules do not cover, guardrails every action passes, and a hash-chained audit log (``loop.py`` is the map)."""
