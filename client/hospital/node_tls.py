"""DICOM over TLS for `brainscan listen` (PS3.15 B.1, the Secure Transport Connection
profile): the node's certificate and key, and the CA bundle its peers' certificates must
chain to, both ways. Callers must present a certificate (mutual authentication); a
handshake that fails is reported to ``on_refused`` (logged, audited) before the connection
is dropped."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brainscan.errors import UsageError


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, certificate: Path | None, key: Path | None, ca: Path | None) -> TlsFiles | None:
        """All three, or none: anything between is a usage error naming what is missing."""
        given = {"--tls-cert": certificate, "--tls-key": key, "--tls-ca": ca}
        if not any(given.values()):
            return None
        missing = [name for name, path in given.items() if path is None]
        if missing:
            needed = "DICOM TLS needs --tls-cert, --tls-key and --tls-ca together"
            raise UsageError(f"{needed}; missing {', '.join(missing)}")
        for name, path in given.items():
            if not Path(path).is_file():
                raise UsageError(f"{name} {path}: no such file")
        return cls(Path(certificate), Path(key), Path(ca))

    def _load(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(self.certificate, self.key)
            context.load_verify_locations(cafile=self.ca)
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot use the TLS files ({self.certificate}, {self.key}, {self.ca}): {exc}") from None
        return context

    def server(self, on_refused: Callable[[str, str], None]) -> ssl.SSLContext:
        """For the node's port: callers must present a certificate the CA signed."""
        context = self._load(_Audited(ssl.PROTOCOL_TLS_SERVER))
        context.verify_mode = ssl.CERT_REQUIRED
        context.on_refused = on_refused
        return context

    def client(self) -> ssl.SSLContext:
        """For sending results: the destination's certificate must chain to the CA and name its host."""
        return self._load(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))


class _Audited(ssl.SSLContext):
    """A server context that reports the handshakes it refuses (pynetdicom wraps each
    accepted socket with ``wrap_socket`` and drops the connection when it raises)."""

    on_refused: Callable[[str, str], None]

    def wrap_socket(self, sock, *args, **kwargs):
        try:
            host, port = sock.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = "?"
        try:
            return super().wrap_socket(sock, *args, **kwargs)
        except (ssl.SSLError, OSError) as exc:
            self.on_refused(peer, getattr(exc, "reason", None) or str(exc))
            raise
