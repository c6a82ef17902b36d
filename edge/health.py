"""``/healthz`` and Prometheus ``/metrics`` on a local port, served from a thread of the runtime.

``/healthz`` answers 200 with a JSON body while the frame loop is alive, and
503 when it has not turned for ``stall_after_s`` (the body says why). The
metrics are the runtime's own registry; gauges that describe current state
(outbox depth and age, fps, source state) are read at scrape time.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

logger = logging.getLogger(__name__)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
HealthProbe = Callable[[], tuple[bool, dict[str, Any]]]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("health: " + format, *args)


class _ThreadingServer(WSGIServer):
    daemon_threads = True


class HealthServer:
    def __init__(self, host: str, port: int, registry: CollectorRegistry, probe: HealthProbe) -> None:
        self._host = host
        self._port = port
        self._metrics = make_wsgi_app(registry)
        self._probe = probe
        self._server: Optional[WSGIServer] = None
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._server.server_port if self._server is not None else self._port

    def start(self) -> None:
        """Serve in a thread. A port that cannot be bound is logged, not fatal: the device keeps working."""
        try:
            self._server = make_server(self._host, self._port, self._app, _ThreadingServer, handler_class=_QuietHandler)
        except OSError as exc:
            logger.error(
                "health: cannot listen on %s:%d (%s); /healthz and /metrics are off", self._host, self._port, exc
            )
            return
        self._thread = threading.Thread(target=self._server.serve_forever, name="tandem-health", daemon=True)
        self._thread.start()
        logger.info("health: /healthz and /metrics on http://%s:%d", self._host, self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            try:
                healthy, body = self._probe()
            except Exception as exc:  # the probe itself failing is unhealthy, not a crash
                logger.exception("health probe failed")
                healthy, body = False, {"status": "error", "error": str(exc)}
            data = json.dumps(body).encode()
            start_response(
                "200 OK" if healthy else "503 Service Unavailable",
                [("Content-Type", "application/json"), ("Content-Length", str(len(data)))],
            )
            return [data]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /healthz or /metrics\n"]
