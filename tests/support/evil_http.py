"""An HTTP file server that misbehaves on request, for the download attacks (TUF's endless data, slow
retrieval, mix-and-match) and for cuts that a device must resume from.

Files are served from a folder; the mode for each file name says how:
    normal    the file, honouring Range (206)
    extra     the file, then as many bytes again (more than any manifest declared)
    trickle   one byte every 0.2 s
    swap      other bytes of the same length (another file than the one the manifest covers)
    cut       the first request: half the file, then the connection closes; later ones honour Range
"""

from __future__ import annotations

import http.server
import re
import threading
import time
from pathlib import Path


class EvilServer:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str]] = []  # (path, Range header)
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests.append((name, self.headers.get("Range", "")))
                path = server.folder / name
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                mode = server.modes.get(name, "normal")
                getattr(server, f"_{mode}")(self, data)

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="evil-http", daemon=True)

    def url(self, prefix: str = "files") -> str:
        return f"http://127.0.0.1:{self.port}/{prefix}"

    def __enter__(self) -> EvilServer:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _send(
        handler: http.server.BaseHTTPRequestHandler, data: bytes, start: int = 0, length: int | None = None
    ) -> None:
        body = data[start:]
        handler.send_response(206 if start else 200)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.end_headers()
        handler.wfile.write(body)

    def _start(self, handler: http.server.BaseHTTPRequestHandler) -> int:
        match = re.match(r"bytes=(\d+)-", handler.headers.get("Range", ""))
        return int(match.group(1)) if match else 0

    def _normal(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        self._send(handler, data, self._start(handler))

    def _extra(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        self._send(handler, data + data, 0)

    def _swap(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        self._send(handler, bytes(reversed(data)), 0)

    def _trickle(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        try:
            for i in range(len(data)):
                handler.wfile.write(data[i : i + 1])
                handler.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the device gave up, as it should
            pass

    def _cut(self, handler: http.server.BaseHTTPRequestHandler, data: bytes) -> None:
        name = handler.path.rsplit("/", 1)[-1]
        if sum(1 for n, _ in self.requests if n == name) > 1:
            self._normal(handler, data)
            return
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data[: len(data) // 2])
        handler.wfile.flush()
        handler.close_connection = True
