"""The DICOM node's Prometheus metrics: counters of what it received, predicted, stored,
failed and tried again, and gauges of what waits, served as text on ``/metrics`` from a
thread of the node (the exposition format, no client library)."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from collections.abc import Callable

PROMETHEUS_TEXT = "text/plain; version=0.0.4"  # the exposition format's content type
PREFIX = "brainscan_node_"
COUNTERS = {
    "objects_received_total": "Objects (instances) stored into the spool.",
    "series_received_total": "Series that began to arrive.",
    "series_predicted_total": "Series whose results were made.",
    "series_stored_total": "Series whose results the destination took.",
    "series_failed_total": "Series that went to failed/ (after their tries, or at once).",
    "retries_total": "Tries of a series put off because Triton or the destination could not be reached.",
    "associations_rejected_total": "Associations refused (a caller not allowed).",
}
GAUGES = {
    "series_pending": "Series received and not yet stored (waiting, being predicted or sent, or to be tried again).",
    "oldest_pending_seconds": "Age of the oldest series not yet stored, since its first object (0: none).",
}


class NodeMetrics:
    def __init__(self, pending: Callable[[], list[float]]):
        """``pending``: the monotonic times the series not yet stored began to arrive."""
        self.counts: Counter[str] = Counter()
        self.pending = pending
        self._lock = threading.Lock()
        self._server: http.server.ThreadingHTTPServer | None = None

    def count(self, name: str, by: int = 1) -> None:
        assert name in COUNTERS, name
        with self._lock:
            self.counts[name] += by

    def text(self) -> str:
        started = self.pending()
        values = {"series_pending": len(started), "oldest_pending_seconds": time.monotonic() - min(started, default=0)}
        if not started:
            values["oldest_pending_seconds"] = 0.0
        lines = []
        with self._lock:
            for name, what in COUNTERS.items():
                lines += [f"# HELP {PREFIX}{name} {what}", f"# TYPE {PREFIX}{name} counter"]
                lines.append(f"{PREFIX}{name} {self.counts[name]}")
        for name, what in GAUGES.items():
            lines += [f"# HELP {PREFIX}{name} {what}", f"# TYPE {PREFIX}{name} gauge"]
            lines.append(f"{PREFIX}{name} {values[name]:g}")
        return "\n".join(lines) + "\n"

    def serve(self, host: str, port: int) -> None:
        """Serve ``text()`` at http://HOST:PORT/metrics from a daemon thread, until ``stop``."""
        metrics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                send_body(self, metrics.text().encode(), PROMETHEUS_TEXT)

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=self._server.serve_forever, name="brainscan-node-metrics", daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def send_body(handler: http.server.BaseHTTPRequestHandler, body: bytes, content_type: str, status: int = 200) -> None:
    """Answer an HTTP request with ``body``, its type and length."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
