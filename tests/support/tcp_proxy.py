"""TCP proxies for tests: a plain forwarder, and one that injects network faults on command.

``TcpForwarder`` is a replica that is down (nothing listens) until ``start``, then up.
``FaultProxy`` sits between two real parts (device and hub, device and broker,
hub and broker) and can, while a test runs:

    blackhole()        hold every byte in both directions, as a network that drops packets
                       (TCP retransmits: what was held flows again on heal(), unless a side gave up)
    reset_every(s)     cut every open connection with a TCP reset every s seconds
    latency(s)         deliver each chunk s seconds after it arrived (pipelined, not serialised)
    throttle(bps)      at most bps bytes a second in each direction
    heal()             back to a clean forwarder

``counts`` says what it did (connections, resets, bytes), for the test's report.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Optional


class TcpForwarder:
    def __init__(self, port: int, target_port: int, host: str = "127.0.0.1") -> None:
        self.port = port
        self._target = (host, target_port)
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.base_events.Server] = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def start(self) -> None:
        """Listen on ``port`` and forward every connection to the target."""
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._forward, self._host, self.port), self._loop
        ).result(10)

    def close(self) -> None:
        """Stop listening, cut every forwarded connection, stop the loop."""

        async def shutdown() -> None:
            # Cancelled connection tasks would each log their CancelledError through asyncio's stream callbacks.
            asyncio.get_running_loop().set_exception_handler(lambda _loop, _context: None)
            if self._server is not None:
                self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _call(self, fn) -> None:  # type: ignore[no-untyped-def]
        """Run fn on the proxy's loop and wait for it."""

        async def run() -> None:
            fn()

        asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

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


@dataclass
class _Faults:
    blackhole: bool = False
    latency_s: float = 0.0
    bytes_per_s: Optional[float] = None


class FaultProxy(TcpForwarder):
    """A forwarder whose faults a test switches on and off while traffic flows; listening from construction."""

    def __init__(self, port: int, target_port: int, host: str = "127.0.0.1") -> None:
        super().__init__(port, target_port, host)
        self._faults = _Faults()
        self._flowing: Optional[asyncio.Event] = None
        self._open: set[asyncio.StreamWriter] = set()
        self._resetter: Optional[asyncio.Task[None]] = None
        self.counts = {"connections": 0, "resets": 0, "bytes": 0}
        self._call(self._init)
        self.start()

    def _init(self) -> None:
        self._flowing = asyncio.Event()
        self._flowing.set()

    # -- faults, called from the test's thread ---------------------------------------------------------------

    def blackhole(self) -> None:
        self._call(lambda: self._set(blackhole=True))

    def latency(self, seconds: float) -> None:
        self._call(lambda: self._set(latency_s=seconds))

    def throttle(self, bytes_per_s: float) -> None:
        self._call(lambda: self._set(bytes_per_s=bytes_per_s))

    def reset_every(self, seconds: float) -> None:
        def start() -> None:
            self._stop_resetter()
            self._resetter = asyncio.get_running_loop().create_task(self._reset_loop(seconds))

        self._call(start)

    def reset_now(self) -> None:
        self._call(self._reset_all)

    def heal(self) -> None:
        def clear() -> None:
            self._stop_resetter()
            self._set(blackhole=False, latency_s=0.0, bytes_per_s=None)

        self._call(clear)

    # -- on the proxy's loop ----------------------------------------------------------------------------------

    def _set(self, **changes: object) -> None:
        for name, value in changes.items():
            setattr(self._faults, name, value)
        assert self._flowing is not None
        if self._faults.blackhole:
            self._flowing.clear()
        else:
            self._flowing.set()

    def _stop_resetter(self) -> None:
        if self._resetter is not None:
            self._resetter.cancel()
            self._resetter = None

    async def _reset_loop(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            self._reset_all()

    def _reset_all(self) -> None:
        """Close every open connection with SO_LINGER 0: the peers see a reset, not a clean close."""
        for writer in list(self._open):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            self._open.discard(writer)
            self.counts["resets"] += 1

    async def _forward(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        assert self._flowing is not None
        await self._flowing.wait()  # a blackholed network connects nothing
        try:
            target_reader, target_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.transport.abort()
            return
        self._open.update((client_writer, target_writer))
        try:
            await asyncio.gather(
                self._faulty_pipe(client_reader, target_writer), self._faulty_pipe(target_reader, client_writer)
            )
        finally:
            self._open.difference_update((client_writer, target_writer))

    async def _faulty_pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read as it comes; deliver each chunk when its faults allow, in order."""
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        assert self._flowing is not None
        flowing = self._flowing

        async def deliver() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    break
                await flowing.wait()
                delay = arrived + self._faults.latency_s - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if self._faults.bytes_per_s:
                    await asyncio.sleep(len(data) / self._faults.bytes_per_s)
                await flowing.wait()
                writer.write(data)
                await writer.drain()
                self.counts["bytes"] += len(data)

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(16384 if self._faults.bytes_per_s else 65536):
                queue.put_nowait((time.monotonic(), data))
            queue.put_nowait((time.monotonic(), b""))
            await delivering
        except (ConnectionError, OSError):
            pass
        finally:
            delivering.cancel()
            writer.close()
