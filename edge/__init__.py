"""The device runtime: sources -> detector -> judge -> outbox -> hub, verdicts back over MQTT.

Runs on Python 3.10 (JetPack 6). ``edge.app.EdgeRuntime`` is the one
composition root; ``edge.config.EdgeConfig`` describes every setting.
"""
