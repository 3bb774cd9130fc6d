"""A TCP proxy with a total bandwidth limit for what the upstream sends, re-read from a file while it runs.

Run: python3 -m tests.testbed.rate_proxy LISTEN_IP:PORT UPSTREAM_IP:PORT RATE_FILE LOG_FILE
RATE_FILE holds a rate in KiB/s (empty, absent or 0: unlimited); it is re-read every 0.5 s, so a test changes
the rate of a running proxy. The limit is for all connections together (one link), downstream only (what the
upstream sends to the clients). The bytes pass through untouched: TLS is the upstream's.
LOG_FILE gets one JSON line per event: {"t", "conn", "event": "open"|"close", "peer", "down", "up"} and, about
every second a connection got bytes, {"t", "from", "conn", "event": "bytes", "down"}: `down` bytes were sent to the
client between `from` (the connection's previous sample, or its opening) and `t`, epoch seconds. The standard
library is enough for a handful of clients at a few MiB/s.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from pathlib import Path

CHUNK = 16 * 1024


class Link:
    """The shared downstream link: a virtual clock that hands out send slots at `rate` bytes/s (None: no limit)."""

    def __init__(self, rate_file: Path) -> None:
        self.rate_file = rate_file
        self.rate: float | None = None
        self._next = 0.0

    def reload(self) -> None:
        try:
            text = self.rate_file.read_text().strip()
        except OSError:
            text = ""
        kib = float(text) if text else 0.0
        self.rate = kib * 1024 if kib > 0 else None

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self._next)  # an idle link earns no credit: no burst after a pause
        self._next = start + n / self.rate
        if self._next > now:
            await asyncio.sleep(self._next - now)


class Proxy:
    def __init__(self, upstream: tuple[str, int], link: Link, log_file: Path) -> None:
        self.upstream, self.link, self.log_file = upstream, link, log_file
        self.ids = itertools.count(1)
        self.open: dict[str, dict] = {}  # conn id -> {"down", "up", "last" (down at the last sample), "since"}

    def log(self, **entry: object) -> None:
        with self.log_file.open("a") as fh:
            fh.write(json.dumps({"t": round(time.time(), 3), **entry}) + "\n")

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counts: dict[str, int],
                    key: str, limited: bool) -> None:
        try:
            while data := await reader.read(CHUNK):
                if limited:
                    await self.link.take(len(data))
                writer.write(data)
                await writer.drain()
                counts[key] += len(data)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        conn = f"{os.getpid()}-{next(self.ids)}"  # unique across restarts of the proxy
        peer = c_writer.get_extra_info("peername")
        counts: dict = {"down": 0, "up": 0, "last": 0, "since": time.time()}
        self.log(conn=conn, event="open", peer=peer[0] if peer else None)
        try:
            u_reader, u_writer = await asyncio.open_connection(*self.upstream)
        except OSError as exc:
            self.log(conn=conn, event="close", down=0, up=0, error=f"upstream: {exc}")
            c_writer.close()
            return
        self.open[conn] = counts
        try:
            # either side closing ends the connection (HTTP over TLS: no half-closed use)
            tasks = [asyncio.create_task(self._pump(u_reader, c_writer, counts, "down", True)),
                     asyncio.create_task(self._pump(c_reader, u_writer, counts, "up", False))]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in tasks:
                t.cancel()
            c_writer.close()
            u_writer.close()
        finally:
            del self.open[conn]
            self._sample(conn, counts)
            self.log(conn=conn, event="close", down=counts["down"], up=counts["up"])

    def _sample(self, conn: str, counts: dict) -> None:
        now, delta = time.time(), counts["down"] - counts["last"]
        if delta:
            self.log(conn=conn, event="bytes", down=delta, **{"from": round(counts["since"], 3)})
        counts["last"], counts["since"] = counts["down"], now

    async def ticker(self) -> None:
        n = 0
        while True:
            await asyncio.sleep(0.5)
            self.link.reload()
            n += 1
            if n % 2 == 0:
                for conn, counts in list(self.open.items()):
                    self._sample(conn, counts)


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def main_async(listen: str, upstream: str, rate_file: str, log_file: str) -> None:
    link = Link(Path(rate_file))
    link.reload()
    proxy = Proxy(_addr(upstream), link, Path(log_file))
    server = await asyncio.start_server(proxy.handle, *_addr(listen), reuse_address=True)
    print(f"rate_proxy: {listen} -> {upstream}, rate file {rate_file}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ticker = asyncio.create_task(proxy.ticker())
    async with server:
        await stop.wait()
    ticker.cancel()


if __name__ == "__main__":
    asyncio.run(main_async(*sys.argv[1:5]))
