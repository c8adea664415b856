"""A bare HTTP/2 client on a socket, for what no gRPC client library sends: streams that declare a
large message, send part of it and never finish (a slow-body attack), and streams opened past the
server's SETTINGS_MAX_CONCURRENT_STREAMS.

It speaks just enough HTTP/2 for that: the preface, SETTINGS (acknowledged), PING (answered),
WINDOW_UPDATE (obeyed: it sends no more than the server's flow-control windows allow, so every byte
it sends is one the server agreed to buffer), RST_STREAM and GOAWAY (recorded), HEADERS from the
server (the stream counts as answered). Header blocks are HPACK literals without indexing or Huffman.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from dataclasses import dataclass, field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7, 0x8
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
INITIAL_WINDOW_SIZE, MAX_CONCURRENT_STREAMS = 0x4, 0x3
REFUSED_STREAM = 0x7
FRAME = 16384  # the largest DATA frame every HTTP/2 peer accepts


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def _integer(value: int) -> bytes:
    """An HPACK integer with a 7-bit prefix (RFC 7541 5.1)."""
    if value < 127:
        return bytes([value])
    out, value = bytearray([127]), value - 127
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + bytes([value]))


def header_block(headers: list[tuple[str, str]]) -> bytes:
    return b"".join(
        b"\x00" + _integer(len(n)) + n.encode() + _integer(len(v)) + v.encode() for n, v in headers
    )


@dataclass
class Stats:
    streams: int = 0
    bytes_sent: int = 0
    refused: int = 0
    """Streams the server reset with REFUSED_STREAM (over its concurrency limit)."""
    reset: int = 0
    """Streams reset with any other code."""
    answered: int = 0
    """Streams the server sent HEADERS on (a response or a trailers-only status)."""
    goaway: bool = False
    closed: bool = False
    server_settings: dict[int, int] = field(default_factory=dict)


class Connection:
    """One HTTP/2 connection to 127.0.0.1 (or ``host``), from ``source`` if given (another loopback
    address is another client host). Not thread-safe; drive it from one thread."""

    def __init__(self, port: int, host: str = "127.0.0.1", source: str | None = None) -> None:
        self.authority = f"{host}:{port}"
        origin = None if source is None else (source, 0)
        self.sock = socket.create_connection((host, port), timeout=10, source_address=origin)
        self.sock.setblocking(False)
        self.stats = Stats()
        self._inbox = b""
        self._next_id = 1
        self._initial_window = 65535
        self._windows: dict[int, int] = {0: 65535}
        self._done: set[int] = set()
        # NOTE: a large receive window, so the server's answers never wait for our WINDOW_UPDATEs
        self._write(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", INITIAL_WINDOW_SIZE, 1 << 24)))
        self._write(frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 30)))

    def open(self, path: str, metadata: list[tuple[str, str]] | None = None) -> int:
        """HEADERS of a gRPC call to ``path``; the stream id."""
        stream, self._next_id = self._next_id, self._next_id + 2
        headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", self.authority),
                   ("content-type", "application/grpc"), ("te", "trailers"), *(metadata or [])]  # fmt: skip
        self._write(frame(HEADERS, END_HEADERS, stream, header_block(headers)))
        self._windows[stream] = self._initial_window
        self.stats.streams += 1
        return stream

    def window(self, stream: int) -> int:
        """Bytes the server lets us send on ``stream`` now (0 once it was reset or answered)."""
        if stream in self._done:
            return 0
        return max(0, min(self._windows.get(stream, 0), self._windows[0]))

    def send(self, stream: int, data: bytes, end: bool = False) -> int:
        """As much of ``data`` as the flow-control windows allow now; the bytes sent."""
        sent = 0
        while sent < len(data) and self.window(stream) > 0 and not self.stats.closed:
            size = min(FRAME, len(data) - sent, self.window(stream))
            last = end and sent + size == len(data)
            if not self._write(frame(DATA, END_STREAM if last else 0, stream, data[sent : sent + size])):
                break
            self._windows[stream] -= size
            self._windows[0] -= size
            sent += size
        self.stats.bytes_sent += sent
        return sent

    def pump(self, timeout_s: float = 0.0) -> None:
        """Read and handle what the server sent, waiting up to ``timeout_s`` for the first bytes."""
        if not self.stats.closed and select.select([self.sock], [], [], timeout_s)[0]:
            self._receive()
        while len(self._inbox) >= 9:
            length = int.from_bytes(self._inbox[:3], "big")
            if len(self._inbox) < 9 + length:
                break
            kind, flags = self._inbox[3], self._inbox[4]
            stream = int.from_bytes(self._inbox[5:9], "big") & 0x7FFFFFFF
            payload, self._inbox = self._inbox[9 : 9 + length], self._inbox[9 + length :]
            self._handle(kind, flags, stream, payload)

    def _receive(self) -> None:
        """Whatever bytes have arrived, kept for ``pump`` (never handled here: a frame being written
        must not be interleaved with the answers to the server's)."""
        while not self.stats.closed:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.stats.closed = True
            self._inbox += chunk

    def _handle(self, kind: int, flags: int, stream: int, payload: bytes) -> None:
        if kind == SETTINGS and not flags & ACK:
            for offset in range(0, len(payload) - 5, 6):
                key, value = struct.unpack_from(">HI", payload, offset)
                self.stats.server_settings[key] = value
                if key == INITIAL_WINDOW_SIZE:  # NOTE: applies to open streams too (RFC 9113 6.9.2)
                    for other in self._windows:
                        if other:
                            self._windows[other] += value - self._initial_window
                    self._initial_window = value
            self._write(frame(SETTINGS, ACK, 0))
        elif kind == PING and not flags & ACK:
            self._write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            self._windows[stream] = self._windows.get(stream, 0) + (
                int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            )
        elif kind == RST_STREAM:
            code = int.from_bytes(payload[:4], "big")
            if code == REFUSED_STREAM:
                self.stats.refused += 1
            else:
                self.stats.reset += 1
            self._done.add(stream)
        elif kind == HEADERS and stream not in self._done:
            self.stats.answered += 1
            self._done.add(stream)
        elif kind == GOAWAY:
            self.stats.goaway = True
        elif kind == DATA and payload:
            self._write(frame(WINDOW_UPDATE, 0, stream, struct.pack(">I", len(payload))))

    def _write(self, data: bytes) -> bool:
        view = memoryview(data)
        deadline = time.monotonic() + 10
        while view and not self.stats.closed:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                self._receive()  # NOTE: the server may wait for us to read before it reads more
                select.select([], [self.sock], [], 0.05)
            except OSError:
                self.stats.closed = True
        return not view

    def close(self) -> None:
        self.sock.close()


def slow_bodies(
    port: int,
    path: str,
    streams: int,
    declared: int,
    per_stream: int,
    seconds: float,
    metadata: list[tuple[str, str]] | None = None,
) -> Connection:
    """Open ``streams`` calls of ``path`` on one connection, each declaring a message of ``declared``
    bytes and sending up to ``per_stream`` of it as fast as the server's windows allow, for at most
    ``seconds``; none finishes. The connection is left open (close it to release the calls)."""
    connection = Connection(port)
    connection.pump(0.5)  # the server's SETTINGS first
    ids = [connection.open(path, metadata) for _ in range(streams)]
    left = {stream: per_stream for stream in ids}
    prefix = b"\x00" + struct.pack(">I", declared)
    for stream in ids:
        connection.send(stream, prefix)
    chunk = b"\x00" * (1 << 20)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not connection.stats.closed:
        connection.pump(0)
        progress = 0
        for stream in ids:
            if left[stream] > 0:
                sent = connection.send(stream, chunk[: min(len(chunk), left[stream])])
                left[stream] -= sent
                progress += sent
        if not any(v > 0 for v in left.values()):
            break
        if not progress:
            connection.pump(0.05)
    connection.pump(0.2)
    return connection
