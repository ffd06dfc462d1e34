"""An audit record repository for the tests: a syslog collector on loopback that takes RFC 5424
messages over UDP (one a datagram, RFC 5426), TCP or TLS (octet-counting framing, RFC 5425
4.3; over TLS the sender must show a certificate the CA signed), and keeps each message's
header fields and its MSG. It reads the frames with its own parser, not the kit's."""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HEADER = re.compile(rb"^<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|\[.*?\]) ?(.*)$", re.S)
BOM = b"\xef\xbb\xbf"


@dataclass
class Received:
    priority: int
    timestamp: str
    host: str
    app: str
    process: str
    msgid: str
    structured: str
    message: bytes  # the MSG as sent (a UTF-8 message starts with the BOM)

    @property
    def xml(self) -> bytes:
        return self.message[len(BOM) :] if self.message.startswith(BOM) else self.message


def parse(frame: bytes) -> Received:
    match = HEADER.match(frame)
    if match is None:
        raise AssertionError(f"not an RFC 5424 message: {frame[:120]!r}")
    fields = [g.decode() for g in match.groups()[:7]]
    return Received(int(fields[0]), *fields[1:], message=match.group(8))


class SyslogCollector:
    """``scheme`` udp, tcp or tls on 127.0.0.1:``port`` (0: a free one); with tls, ``tls`` is
    (certificate, key, CA) and senders' certificates are required."""

    def __init__(self, scheme: str, port: int = 0, tls: tuple[Path, Path, Path] | None = None):
        self.scheme, self.received, self.refused = scheme, [], []
        self._lock = threading.Lock()
        kind = socket.SOCK_DGRAM if scheme == "udp" else socket.SOCK_STREAM
        self._socket = socket.socket(socket.AF_INET, kind)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        self.port = self._socket.getsockname()[1]
        self._context = None
        if scheme == "tls":
            certificate, key, ca = tls
            self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._context.load_cert_chain(certificate, key)
            self._context.load_verify_locations(cafile=ca)
            self._context.verify_mode = ssl.CERT_REQUIRED
        self._stopped = threading.Event()
        self._socket.settimeout(0.2)
        if kind == socket.SOCK_STREAM:
            self._socket.listen()
        target = self._datagrams if scheme == "udp" else self._connections
        threading.Thread(target=target, daemon=True).start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def _keep(self, frame: bytes) -> None:
        with self._lock:
            self.received.append(parse(frame))

    def _datagrams(self) -> None:
        while not self._stopped.is_set():
            try:
                frame, _ = self._socket.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self._keep(frame)

    def _connections(self) -> None:
        while not self._stopped.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._stream, args=(connection,), daemon=True).start()

    def _stream(self, connection: socket.socket) -> None:
        try:
            if self._context is not None:
                connection.settimeout(10)
                connection = self._context.wrap_socket(connection, server_side=True)
            connection.settimeout(0.5)
            buffer = b""
            while not self._stopped.is_set():
                try:
                    chunk = connection.recv(65536)
                except (TimeoutError, ssl.SSLWantReadError):
                    continue
                if not chunk:
                    return
                buffer += chunk
                while b" " in buffer:  # MSG-LEN SP SYSLOG-MSG
                    length, _, rest = buffer.partition(b" ")
                    assert length.isdigit(), f"not octet-counted framing: {buffer[:40]!r}"
                    if len(rest) < int(length):
                        break
                    self._keep(rest[: int(length)])
                    buffer = rest[int(length) :]
        except (ssl.SSLError, OSError) as exc:
            self.refused.append(str(exc))
        finally:
            connection.close()

    def wait(self, count: int, seconds: float = 30) -> list[Received]:
        deadline = time.monotonic() + seconds
        while len(self.received) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.received)} of {count} audit messages within {seconds} s")
            time.sleep(0.1)
        return list(self.received)

    def close(self) -> None:
        self._stopped.set()
        self._socket.close()

    def __enter__(self) -> SyslogCollector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
