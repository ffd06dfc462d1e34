"""What guards the server: TLS for gRPC and the key of Triton's administrative APIs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainscan import contract
from brainscan.serving.errors import ServerError


@dataclass(frozen=True)
class GrpcTls:
    """TLS for the gRPC endpoint: the server's certificate and key (PEM); with
    ``client_ca``, clients must present a certificate signed by it (mutual TLS)."""

    certificate: Path
    key: Path
    client_ca: Path | None = None

    def flags(self) -> list[str]:
        for what, path in (("certificate", self.certificate), ("key", self.key), ("client CA", self.client_ca)):
            if path is not None and not Path(path).is_file():
                raise ServerError(f"TLS {what} file {path} does not exist")
        flags = [
            "--grpc-use-ssl=true",
            f"--grpc-server-cert={Path(self.certificate).resolve()}",
            f"--grpc-server-key={Path(self.key).resolve()}",
        ]
        if self.client_ca is not None:
            flags += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(self.client_ca).resolve()}"]
        return flags


MIN_ADMIN_KEY = 16  # characters


def read_admin_key(path: Path) -> str:
    """The admin key in ``path`` (surrounding white space ignored)."""
    try:
        key = Path(path).read_text().strip()
    except OSError as exc:
        raise ServerError(f"cannot read the admin key file {path}: {exc.strerror}") from None
    if len(key) < MIN_ADMIN_KEY or any(c.isspace() or c in ":=," for c in key):
        raise ServerError(
            f"the admin key in {path} must be at least {MIN_ADMIN_KEY} characters, without spaces, ':', '=' or ','"
        )
    return key


def admin_flags(admin_key: str) -> list[str]:
    """tritonserver's flags that restrict contract.ADMIN_APIS to requests carrying ``admin_key``
    in contract.ADMIN_HEADER, over HTTP and gRPC. Triton reads this setting only from its
    command line (server src/command_line_parser.cc: --http-restricted-api and
    --grpc-restricted-protocol; no file, no environment variable)."""
    restricted = f"{','.join(contract.ADMIN_APIS)}:{contract.ADMIN_HEADER}={admin_key}"
    return [f"--http-restricted-api={restricted}", f"--grpc-restricted-protocol={restricted}"]
