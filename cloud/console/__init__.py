"""The fleet console: web pages under ``/console`` for operators, served by the hub's HTTP app.

    Fleet          every device: last seen, group, model, rollout stage, escalation sparkline, outbox, fps per
                   camera, and the backend really running (and why, if it is not the one configured)
    Device         its cameras, settings desired and reported, model history, recent escalations, heartbeats
    Rollouts       waves, each device's state, each abort rule's value against its bound; pause, resume, abort,
                   roll back
    Orchestrator   proposals waiting for approval, applied actions and their effect, blocked calls, the audit trail
    Traces         search; one trace: the escalated image with its boxes, each model's answer, hops, cost
    Hard examples  frames the cloud labelled otherwise than the device: confirm or correct, export as a dataset
    Alerts         a device silent, an escalation-rate jump, a rollout aborted (``cloud.console.alerts``)

The page is one HTML file and one script, written for this package and served from it (no build step, no
framework, nothing fetched from the internet). It draws each view from the admin API and the console's own
reads (``cloud.api.console``), and stays live on one server-sent event stream.
"""

from pathlib import Path

STATIC = Path(__file__).parent / "static"  # index.html, console.js, console.css
