"""Who the node refuses, and how it says so: callers not on loopback when no AE title is
named, AE titles not allowed (pynetdicom answers them with an A-ASSOCIATE-RJ), and TLS
handshakes that fail. Each refusal is logged, counted, written to the audit trail and, with
``--atna``, sent to the audit record repository as a security alert."""

from __future__ import annotations

import ipaddress

# A-ASSOCIATE-RJ: result, source and reason (PS3.8 9.3.4)
REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


def _loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class Gatekeeper:
    """The listener's handlers of refusals (``config``, ``log``, ``metrics``, ``audit`` and
    ``atna`` are the listener's)."""

    def _on_requested(self, event) -> None:
        """With no --allow-ae, refuse a caller that is not on loopback (before any object
        arrives). Named callers are checked by pynetdicom itself (``require_calling_aet``),
        which answers others with an A-ASSOCIATE-RJ."""
        requestor = event.assoc.requestor
        if not self.config.allow_ae and not _loopback(requestor.address):
            self.log(
                f"refused an association from {requestor.address}: with no --allow-ae only loopback callers are taken"
            )
            event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNISED)
            self._refused("association-rejected", requestor.address, "a caller not on loopback (no --allow-ae)")

    def _on_tls_refused(self, peer: str, reason: str) -> None:
        """A TLS handshake that failed (no certificate, one the CA did not sign, no common protocol)."""
        self.log(f"refused a TLS connection from {peer}: {reason}")
        self._refused("tls-refused", peer, f"TLS handshake refused: {reason}")

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        calling = str(getattr(requestor.primitive, "calling_ae_title", "") or "").strip()
        self.log(f"refused an association from AE {calling!r} at {requestor.address}: not in --allow-ae")
        self._refused("association-rejected", requestor.address, f"calling AE title {calling!r} not allowed", calling)

    def _refused(self, event: str, peer: str, reason: str, ae: str | None = None) -> None:
        """Counted, in the audit trail (no patient data) and, with --atna, a security alert."""
        self.metrics.count("associations_rejected_total")
        self.audit.write("", "", "security-alert", event=event, peer=peer, ae=ae, error=reason)
        self.atna.security_alert(self.me, peer, reason)
