"""An HTTP MJPEG camera for tests: multipart/x-mixed-replace JPEG frames, which can be cut off and brought back."""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from pathlib import Path

import cv2
import numpy as np


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class MjpegCamera:
    """Serves ``images`` in a loop at ``fps`` on 127.0.0.1:``port``/stream.mjpg."""

    def __init__(self, images: list[Path], port: int, fps: float = 60.0) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/stream.mjpg"
        self._frames = [self._jpeg(p) for p in images]
        self._interval = 1.0 / fps
        self._server: _Server | None = None
        self._alive = threading.Event()
        self.sent = 0

    @staticmethod
    def _jpeg(path: Path) -> bytes:
        image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        ok, data = cv2.imencode(".jpg", np.asarray(image), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise RuntimeError(f"cannot encode {path}")
        return data.tobytes()

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                i = 0
                try:
                    while camera._alive.is_set():
                        frame = camera._frames[i % len(camera._frames)]
                        self.wfile.write(
                            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(frame)
                            + frame
                            + b"\r\n"
                        )
                        camera.sent += 1
                        i += 1
                        time.sleep(camera._interval)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def log_message(self, *args: object) -> None:
                return

        self._alive.set()
        self._server = _Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def cut(self) -> None:
        """The camera goes away: open streams end and new connections are refused."""
        self._alive.clear()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
