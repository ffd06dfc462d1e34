"""Where the ensemble is and how to reach it: every connection option of the client in one
value, checked when it is made."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from brainscan import contract
from brainscan.errors import UsageError

PROTOCOLS = tuple(p.value for p in contract.Protocol)
DNS_SCHEME = "dns:///"  # every address of the name, e.g. a Kubernetes headless Service


@dataclass(frozen=True)
class Connection:
    """Where the ensemble is and how to reach it; every option of ``brainscan predict``'s
    connection group, in one value."""

    # host:port, several comma-separated (or given as a list), or dns:///NAME:PORT; None = the
    # protocol's default port on loopback
    url: str | list[str] | None = None
    protocol: contract.Protocol | str = contract.Protocol.GRPC  # a str of one is taken too
    ssl: bool = False
    root_certificates: Path | None = None  # PEM of the CA that signed the server's certificate
    private_key: Path | None = None  # client key, for servers that verify clients (mutual TLS)
    certificate_chain: Path | None = None  # client certificate chain (mutual TLS)
    model: str = contract.ENSEMBLE
    model_version: str = ""  # "" = the server's policy (latest)
    timeout: float = 60.0  # seconds per attempt
    retries: int = 8  # further attempts while the server is unreachable
    backoff: float = 0.5  # first wait in seconds; doubles per attempt up to BACKOFF_CAP
    shared_memory: bool = False  # slices through system shared memory (a server on this machine)
    admin_key_file: Path | None = None  # the server's admin key, which its shared-memory API needs

    def __post_init__(self):
        if isinstance(self.url, (list, tuple)):  # --url repeated: every server, as with commas
            object.__setattr__(self, "url", ",".join(self.url) or None)
        try:
            object.__setattr__(self, "protocol", contract.Protocol(str(self.protocol).lower()))
        except ValueError:
            raise UsageError(f"protocol {str(self.protocol)!r}: use one of {', '.join(PROTOCOLS)}") from None
        if self.url is None:
            port = contract.GRPC_PORT if self.protocol is contract.Protocol.GRPC else contract.HTTP_PORT
            object.__setattr__(self, "url", f"{contract.DEFAULT_HOST}:{port}")
        if "://" in self.url and not self.url.startswith(DNS_SCHEME):
            raise UsageError(
                f"--url {self.url}: write host:port (several, comma-separated, or {DNS_SCHEME}NAME:PORT), "
                "without a scheme (use --ssl for TLS)"
            )
        if self.balanced and self.protocol is not contract.Protocol.GRPC:
            raise UsageError(
                f"--url {self.url}: spreading requests over several servers needs --protocol grpc "
                "(for HTTP, put a load balancer in front and give its address)"
            )
        for server in self.servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit():
                raise UsageError(f"--url {self.url}: {server!r} is not host:port")
        for name in ("root_certificates", "private_key", "certificate_chain"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise UsageError(f"{name.replace('_', ' ')} file {path} does not exist")
        if self.shared_memory and (self.admin_key_file is None or self.balanced):
            raise UsageError(
                f"--shared-memory needs one server on this machine and its admin key file ({contract.ADMIN_KEY_ENV})"
            )
        if self.admin_key_file is not None and not Path(self.admin_key_file).is_file():
            raise UsageError(f"admin key file {self.admin_key_file} does not exist")
        if (self.private_key is None) != (self.certificate_chain is None):
            raise UsageError("mutual TLS needs both the client key and the client certificate chain")

    @property
    def servers(self) -> list[str]:
        """The host:port of each server given (one for a dns:/// name: gRPC resolves it)."""
        if self.url.startswith(DNS_SCHEME):
            return [self.url[len(DNS_SCHEME) :]]
        return [part.strip() for part in self.url.split(",") if part.strip()]

    @property
    def balanced(self) -> bool:
        """Requests go round-robin over several servers: a list, or every address of a DNS name."""
        return self.url.startswith(DNS_SCHEME) or len(self.servers) > 1

    @property
    def grpc_target(self) -> str:
        """The channel target: host:port, a dns:/// name, or ipv4:a:p,b:p for a list (each host
        resolved to its IPv4 addresses now; gRPC balances over them)."""
        if not self.balanced or self.url.startswith(DNS_SCHEME):
            return self.url
        addresses = []
        for server in self.servers:
            host, _, port = server.rpartition(":")
            try:
                found = {info[4][0] for info in socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_STREAM)}
            except socket.gaierror as exc:
                raise UsageError(f"--url: cannot resolve {host}: {exc.strerror}") from None
            addresses += [f"{address}:{port}" for address in sorted(found)]
        return "ipv4:" + ",".join(dict.fromkeys(addresses))

    @property
    def target(self) -> str:
        """The model as the user named it: ``name`` or ``name`` version ``v``."""
        return self.model + (f" version {self.model_version}" if self.model_version else "")

    @property
    def address(self) -> str:
        scheme = f"{self.protocol.value}{'s' if self.ssl else ''}"
        return f"{scheme}://{self.url}"
