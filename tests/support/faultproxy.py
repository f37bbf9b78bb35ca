"""A fault-injecting HTTP proxy on loopback, in front of a real registry.

Tests script its behaviour per request: each ``Fault`` matches requests by method, path
(a regular expression searched in the path) and ``Range`` header, for a number of
times, and does one thing to them instead of passing them through:

- ``reset_after(n)``: forward, then send the answer's head and ``n`` bytes of its body
  and reset the connection (RST);
- ``status(code, retry_after=...)``: answer ``code`` itself (500/502/503/429);
- ``unauthorized()``: forward without the Authorization header, so the registry itself
  answers 401 with its challenge (a token that expired mid-pull);
- ``drop()``: close the connection at once, nothing forwarded, nothing answered;
- ``lose_answer()``: forward, let the registry answer in full, then close the
  connection without a byte of it (the request took effect; the client cannot know);
- ``trickle(piece, pause)``: forward, then send the answer ``piece`` bytes at a time;
- ``corrupt(at)``: forward, then flip one byte of the body at offset ``at`` (of the
  body, clamped to its end; None: its middle), so only a verifier can tell.

``disappear()`` closes the listening socket and every open connection: the registry is
gone (connections are refused) until ``reappear()``.

Each client connection carries one request (the proxy answers with ``Connection:
close`` and asks the registry for the same), which keeps the proxy simple: threads,
blocking sockets, the registry's answer read whole before it is passed on.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_HEAD_LIMIT = 64 * 1024
_IO_TIMEOUT = 30.0


@dataclass
class Fault:
    action: str
    method: str | None = None
    path: str = ""
    # None: any request; True: only with a Range header; "multi": only multi-range ones;
    # or a predicate on the Range header's value ("" when there is none).
    ranged: bool | str | Callable[[str], bool] | None = None
    times: int | None = 1  # None: every matching request
    after: int | None = 0  # bytes of body before a reset; offset of a corrupted byte
    status_code: int = 0
    retry_after: str | None = None
    piece: int = 64
    pause: float = 0.01
    hits: int = 0

    def matches(self, method: str, path: str, range_header: str) -> bool:
        if self.times is not None and self.hits >= self.times:
            return False
        if self.method is not None and self.method != method:
            return False
        if self.path and re.search(self.path, path) is None:
            return False
        if self.ranged is True and not range_header:
            return False
        if self.ranged == "multi" and "," not in range_header:
            return False
        return not (callable(self.ranged) and not self.ranged(range_header))


def reset_after(n: int, **match: object) -> Fault:
    return Fault("reset", after=n, **match)  # type: ignore[arg-type]


def status(code: int, retry_after: str | None = None, **match: object) -> Fault:
    return Fault("status", status_code=code, retry_after=retry_after, **match)  # type: ignore[arg-type]


def unauthorized(**match: object) -> Fault:
    return Fault("unauthorized", **match)  # type: ignore[arg-type]


def drop(**match: object) -> Fault:
    return Fault("drop", **match)  # type: ignore[arg-type]


def lose_answer(**match: object) -> Fault:
    return Fault("lose", **match)  # type: ignore[arg-type]


def trickle(piece: int = 64, pause: float = 0.01, **match: object) -> Fault:
    return Fault("trickle", piece=piece, pause=pause, **match)  # type: ignore[arg-type]


def corrupt(at: int | None = None, **match: object) -> Fault:
    return Fault("corrupt", after=at, **match)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Seen:
    """One request as the proxy saw it, and what it did with it."""

    method: str
    path: str
    range: str
    action: str  # "forward" or a Fault's action
    had_authorization: bool


@dataclass
class FaultProxy:
    """127.0.0.1:<port> -> ``upstream`` ("host:port"), with scripted faults."""

    upstream: str
    faults: list[Fault] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.port = 0
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._stopping = False

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- scripting ---------------------------------------------------------------------

    def add(self, *faults: Fault) -> None:
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self.seen
                if (method is None or s.method == method) and re.search(path, s.path)
            ]

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping = False
        self._thread = threading.Thread(
            target=self._accept, args=(listener,), name=f"faultproxy-{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        listener, self._listener = self._listener, None
        if listener is not None:
            # shutdown wakes the accepting thread; close alone does not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            connections = list(self._open)
        for connection in connections:
            _reset(connection)
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def disappear(self) -> None:
        """The registry is gone: nothing listens on the port, open connections reset."""
        self.stop()

    def reappear(self) -> None:
        self.start()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------

    def _accept(self, listener: socket.socket) -> None:
        while not self._stopping:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with self._lock:
                self._open.add(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            client.settimeout(_IO_TIMEOUT)
            self._one_request(client)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(client)
            with contextlib.suppress(OSError):
                client.close()

    def _one_request(self, client: socket.socket) -> None:
        head, body = _read_request(client)
        if head is None:
            return
        request_line, headers = _parse_head(head)
        method, target, _ = ([*request_line.split(" ", 2), "", ""])[:3]
        range_header = _header(headers, "range") or ""
        with self._lock:
            fault = next((f for f in self.faults if f.matches(method, target, range_header)), None)
            if fault is not None:
                fault.hits += 1
            self.seen.append(
                Seen(
                    method,
                    target,
                    range_header,
                    fault.action if fault else "forward",
                    _header(headers, "authorization") is not None,
                )
            )
        action = fault.action if fault is not None else "forward"
        if action == "drop":
            _reset(client)
            return
        if action == "status":
            assert fault is not None
            _answer(client, fault.status_code, fault.retry_after)
            return
        if action == "unauthorized":
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        answer = self._forward(request_line, headers, body)
        if action == "lose":
            _reset(client)
            return
        answer_head, _, answer_body = answer.partition(b"\r\n\r\n")
        answer_head = _closing(answer_head) + b"\r\n\r\n"
        if action == "reset":
            assert fault is not None
            client.sendall(answer_head + answer_body[: fault.after or 0])
            time.sleep(0.05)  # let the bytes leave before the reset overtakes them
            _reset(client)
            return
        if action == "corrupt" and answer_body:
            assert fault is not None
            middle = len(answer_body) // 2
            position = middle if fault.after is None else min(fault.after, len(answer_body) - 1)
            damaged = bytearray(answer_body)
            damaged[position] ^= 0xFF
            answer_body = bytes(damaged)
        if action == "trickle":
            assert fault is not None
            client.sendall(answer_head)
            for start in range(0, len(answer_body), fault.piece):
                client.sendall(answer_body[start : start + fault.piece])
                time.sleep(fault.pause)
            return
        client.sendall(answer_head + answer_body)

    def _forward(self, request_line: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        """The registry's whole answer (head and body) to the request, over a connection
        of its own that it closes after answering."""
        host, _, port = self.upstream.rpartition(":")
        kept = [(k, v) for k, v in headers if k.lower() not in ("connection", "keep-alive")]
        lines = [request_line, *(f"{k}: {v}" for k, v in kept), "Connection: close"]
        with socket.create_connection((host, int(port)), timeout=_IO_TIMEOUT) as upstream:
            upstream.sendall("\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
            pieces = []
            while piece := upstream.recv(1 << 16):
                pieces.append(piece)
        return b"".join(pieces)


def _read_request(client: socket.socket) -> tuple[bytes | None, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        piece = client.recv(1 << 16)
        if not piece:
            return None, b""
        data += piece
        if len(data) > _HEAD_LIMIT:
            return None, b""
    head, _, rest = data.partition(b"\r\n\r\n")
    _, headers = _parse_head(head)
    length = int(_header(headers, "content-length") or 0)
    while len(rest) < length:
        piece = client.recv(1 << 16)
        if not piece:
            break
        rest += piece
    return head, rest[:length]


def _parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name.strip(), value.strip()))
    return lines[0], headers


def _header(headers: list[tuple[str, str]], name: str) -> str | None:
    return next((value for key, value in headers if key.lower() == name), None)


def _closing(head: bytes) -> bytes:
    """The answer's head with ``Connection: close`` (one request per connection)."""
    lines = [
        line
        for line in head.split(b"\r\n")
        if not line.lower().startswith((b"connection:", b"keep-alive:"))
    ]
    return b"\r\n".join([*lines, b"Connection: close"])


def _answer(client: socket.socket, code: int, retry_after: str | None) -> None:
    reasons = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway"}
    reason = reasons.get(code, "Service Unavailable" if code == 503 else "Error")
    body = b'{"errors":[{"code":"UNAVAILABLE","message":"injected by the fault proxy"}]}'
    lines = [
        f"HTTP/1.1 {code} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        lines.append(f"Retry-After: {retry_after}")
    client.sendall("\r\n".join(lines).encode() + b"\r\n\r\n" + body)


def _reset(connection: socket.socket) -> None:
    """Close with RST, not FIN: the peer sees 'connection reset by peer'."""
    try:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
    except OSError:
        pass
