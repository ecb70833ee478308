"""HTTP/1.1 clients on raw sockets that behave as real ones do: a browser tab
closed after the status line, a load balancer giving up mid-stream, a client
that sends and leaves, and a well-behaved one. A reset is ``SO_LINGER``
(1, 0) then ``close()``: the server sees ECONNRESET, not a clean FIN."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable


def _request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()


def _reset(sock: socket.socket) -> None:
    # SO_LINGER (1, 0): close() sends a reset, as a closed browser tab or a
    # load balancer giving up does.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_then_reset(port: int, path: str, enough: Callable[[bytes], bool], size: int) -> bytes:
    """Send the request, read ``size`` bytes at a time until ``enough`` holds
    (or the server closes), then reset."""
    sock = _connect(port)
    sock.sendall(_request(path))
    got = b""
    while not enough(got):
        chunk = sock.recv(size)
        if not chunk:
            break
        got += chunk
    _reset(sock)
    return got


def status_line_then_reset(port: int, path: str) -> bytes:
    """(a) Read up to the status line, then reset."""
    return _read_then_reset(port, path, lambda got: b"\r\n" in got, 1)


def first_chunk_then_reset(port: int, path: str) -> bytes:
    """(b) Read the headers and some of the body, then reset."""
    return _read_then_reset(
        port, path, lambda got: b"\r\n\r\n" in got and len(got.split(b"\r\n\r\n", 1)[1]) >= 8, 4096
    )


def close_before_response(port: int, path: str) -> None:
    """(c) Send the request and close at once, before any response."""
    sock = _connect(port)
    sock.sendall(_request(path))
    sock.close()


def well_behaved(port: int, path: str) -> bytes:
    """(d) Read the whole response."""
    sock = _connect(port)
    sock.sendall(_request(path))
    got = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    sock.close()
    return got
