"""Loopback TCP: connect_1000 and tcp_256mib.

The listener runs in a thread of the benchmark process; the client is a
Python program (sandboxed with net_allow=["127.0.0.1:PORT"]) that times
itself, so interpreter start-up is excluded.
"""
from __future__ import annotations

import socket
import sys
import threading

from ..core import (SANDLOCK, UNSANDBOXED, Row, RunFailed, Settings, in_program, measure,
                    readable, run_plain, run_sandlock)

CONNECTS = 1000

# SO_LINGER 0 makes close() send RST instead of leaving the client port in
# TIME_WAIT, so repeated runs never run out of ephemeral ports.
CONNECT_PROGRAM = """
import socket, struct, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
addr = ("127.0.0.1", port)
linger = struct.pack("ii", 1, 0)
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.connect(addr)
    s.close()
print(time.perf_counter() - t0)
"""

# Send `total` bytes in 1 MiB chunks, half-close, and wait for the listener to
# close its end (it does so only after reading everything).
SEND_PROGRAM = """
import socket, sys, time
port, total = int(sys.argv[1]), int(sys.argv[2])
chunk = memoryview(bytearray(1 << 20))
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.connect(("127.0.0.1", port))
t0 = time.perf_counter()
left = total
while left:
    n = min(left, len(chunk))
    s.sendall(chunk[:n])
    left -= n
s.shutdown(socket.SHUT_WR)
s.recv(1)
print(time.perf_counter() - t0)
"""


class Listener:
    """A loopback TCP listener on an ephemeral port, served by one thread.

    mode "close": accept and close at once.  mode "drain": read each
    connection to EOF, record its byte count, then close it."""

    def __init__(self, mode: str):
        self.mode = mode
        self.received: list[int] = []
        self.accepted = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4096)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name=f"listener-{mode}", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = bytearray(1 << 20)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "close":
                conn.close()
                continue
            conn.settimeout(None)
            n = 0
            try:
                while True:
                    k = conn.recv_into(buf)
                    if not k:
                        break
                    n += k
            except OSError:
                pass
            self.received.append(n)
            conn.close()

    def __enter__(self) -> "Listener":
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _policy(port: int) -> dict:
    return {"fs_readable": readable(), "net_allow": [f"127.0.0.1:{port}"]}


def connect_1000(s: Settings) -> Row:
    """1,000 loopback TCP connects, µs each; net_allow=[127.0.0.1:PORT]."""
    reps = s.reps(10, 2)
    with Listener("close") as lis:
        cmd = [sys.executable, "-c", CONNECT_PROGRAM, str(lis.port), str(CONNECTS)]
        policy = _policy(lis.port)
        cells = measure({
            UNSANDBOXED: lambda: in_program(run_plain(cmd)),
            SANDLOCK: lambda: in_program(run_sandlock(cmd, policy, workload="connect_1000")),
        }, reps)
    return Row(name="connect_1000", metric=f"in-program time per connect ({CONNECTS} loopback connects)",
               unit="us", per=CONNECTS, reps=reps, cells=cells)


def tcp_256mib(s: Settings) -> Row:
    """256 MiB loopback TCP send (32 MiB with --quick), MB/s; net_allow."""
    reps = s.reps(5, 1)
    total = (32 if s.quick else 256) << 20
    with Listener("drain") as lis:
        cmd = [sys.executable, "-c", SEND_PROGRAM, str(lis.port), str(total)]
        policy = _policy(lis.port)

        def checked(run):
            sample = in_program(run())
            if not lis.received or lis.received[-1] != total:
                got = lis.received[-1] if lis.received else None
                raise RunFailed(f"listener received {got} bytes, expected {total}")
            return sample

        cells = measure({
            UNSANDBOXED: lambda: checked(lambda: run_plain(cmd)),
            SANDLOCK: lambda: checked(lambda: run_sandlock(cmd, policy, workload="tcp_256mib")),
        }, reps)
    return Row(name="tcp_256mib", metric=f"loopback send of {total >> 20} MiB, in-program",
               kind="throughput", nbytes=total, reps=reps, cells=cells)
