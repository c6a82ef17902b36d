"""A TCP forwarder for tests: a replica that is down (nothing listens) until ``start``, then up."""

from __future__ import annotations

import asyncio
import threading
from typing import Optional


class TcpForwarder:
    def __init__(self, port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self._target = (host, target_port)
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.base_events.Server] = None
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def start(self) -> None:
        """Listen on ``port`` and forward every connection to the target."""
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._forward, self._host, self.port), self._loop
        ).result(10)

    def close(self) -> None:
        """Stop listening, cut every forwarded connection, stop the loop."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, target_writer), _pipe(target_reader, client_writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
