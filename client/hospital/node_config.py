"""What `brainscan listen` is told: the node's configuration, where its results go, and the
DICOM network's defaults it starts from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainscan.client.hospital.node_tls import TlsFiles
from brainscan.errors import UsageError

# pynetdicom's storescp defaults: the largest PDU received, and the ACSE, DIMSE and network timeouts (s)
MAX_PDU = 16382
TIMEOUT = 30.0
LONGEST_WAIT = 300.0  # seconds, at most, between two tries of a series
AE_TITLE_LENGTH = 16  # characters, at most (PS3.5: AE is 16 bytes)
AE_TITLE, PORT = "BRAINSCAN", 11112  # the node's, by default
IDLE = 10.0  # seconds without a new object: the series is complete
RETRY_FOR = 3600.0  # seconds a series is tried again while Triton or the destination is away
KEEP_FOR = 600.0  # seconds a series' objects and results are kept once stored (late objects join them)
MAX_SERIES_MB, MAX_SPOOL_MB = 2048, 20480
# Compressed transfer syntaxes taken as they come (pydicom decodes them with pylibjpeg,
# openjpeg and pyjpegls): JPEG baseline, extended and lossless, JPEG-LS, JPEG 2000, RLE
COMPRESSED_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
)


@dataclass(frozen=True)
class Destination:
    """Where results go by C-STORE: AET@HOST:PORT."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        title, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not title or not host or not port.isdigit() or len(title) > AE_TITLE_LENGTH:
            raise UsageError(f"{text!r}: write AET@HOST:PORT (an AE title of at most {AE_TITLE_LENGTH} characters)")
        return cls(title, host, int(port))


@dataclass
class ListenerConfig:
    ae_title: str
    port: int
    spool: Path
    host: str = "127.0.0.1"
    allow_ae: tuple[str, ...] = ()
    idle: float = IDLE
    max_series_bytes: int = MAX_SERIES_MB << 20
    max_spool_bytes: int = MAX_SPOOL_MB << 20
    store_to: Destination | None = None
    audit: Path | None = None  # default: SPOOL/audit.jsonl
    retry_for: float = RETRY_FOR
    keep_for: float = KEEP_FOR
    max_pdu: int = MAX_PDU
    metrics_port: int | None = None  # Prometheus text on http://HOST:PORT/metrics
    tls: TlsFiles | None = None  # DICOM TLS on the node's port, callers' certificates required
    acse_timeout: float = TIMEOUT
    dimse_timeout: float = TIMEOUT
    network_timeout: float = TIMEOUT

    @property
    def audit_path(self) -> Path:
        return Path(self.audit) if self.audit is not None else Path(self.spool) / "audit.jsonl"
