"""What `brainscan listen` plugs into the node (``listener.Listener``): predicting a spooled
series with the usual run, and sending its results by C-STORE or STOW-RS."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from brainscan.client.hospital.atna import SERIOUS_FAILURE
from brainscan.client.hospital.atna_events import AtnaAudit
from brainscan.client.hospital.listener import ALREADY_ANSWERED, RESULTS_FOLDER, SUCCESS
from brainscan.client.hospital.node_config import Destination
from brainscan.client.hospital.spool import ResultsRefused, RetryLater, SeriesFailed


def predict_series(
    connection, spool: Path, audit_path: Path, rules: Path | None = None
) -> Callable[[Path, str, str, Callable[[list[Path]], bool]], str]:
    """Predict one spooled series with the usual run (the served models' intended use,
    narrowed by ``rules``) and hand its SEG and SR (the SR alone when it is refused) to
    ``deliver`` before the run audits it; what became of it, ``RetryLater`` when Triton or
    the destination could not be reached, or an error."""
    from brainscan.client.batch.engine import RunOptions, run_inputs
    from brainscan.client.batch.records import Failure
    from brainscan.client.imaging.files import collect_inputs
    from brainscan.client.triton.inference import ModelNotReadyError, ServerUnavailableError
    from brainscan.layout import InputKind

    def process(folder: Path, study: str, uid: str, deliver: Callable[[list[Path]], bool]) -> str:
        inputs, rejected, _ = collect_inputs([folder])
        inputs = [i for i in inputs if i.kind is InputKind.DICOM and i.series.uid == uid]
        if not inputs:
            reason = rejected[0][1] if rejected else "no image slices"
            raise SeriesFailed(f"series {uid}: {reason}")

        sent = []

        def store(outcome):
            paths = [Path(p) for p in outcome.record.outputs or [] if p.endswith((".seg.dcm", ".sr.dcm"))]
            try:
                sent.append(deliver(paths))
            except Exception as exc:  # noqa: BLE001  (audited as such; the node sends them again)
                outcome.error = f"the results were not sent: {exc}; they are sent again later"
                outcome.status, outcome.record = Failure.STORE, None
            else:
                outcome.record.stored = True if sent[-1] else "already answered"
            return outcome

        options = RunOptions(out=spool / RESULTS_FOLDER / uid, audit=audit_path, rules=rules, deliver=store)
        try:
            outcome = asyncio.run(run_inputs(inputs, connection, options, lambda _: None))[0]
        except (ServerUnavailableError, ModelNotReadyError) as exc:
            raise RetryLater(f"series {uid}: {exc}") from None
        if outcome.status in (Failure.STORE, Failure.UNAVAILABLE):
            raise RetryLater(f"series {uid}: {outcome.error}")
        if outcome.error:
            raise SeriesFailed(outcome.error)
        if sent and not sent[-1]:
            return ALREADY_ANSWERED
        if outcome.refused:
            return f"not analysed, outside the intended use ({', '.join(outcome.verdict.codes)}): its SR sent"
        return "SEG and SR sent"

    return process


def c_store(
    destination: Destination, ae_title: str, tls=None, atna: AtnaAudit | None = None
) -> Callable[[list[Path], str], None]:
    """Send files by C-STORE to ``destination`` (over TLS with ``tls``, a client
    ``ssl.SSLContext``); raises naming what failed. ``atna`` reports each sending, done or not."""
    from brainscan.client.hospital.atna_events import node, remote

    atna = atna or AtnaAudit(None, ae_title)
    peer = remote(destination.ae_title, destination.host)

    def send(paths: list[Path], uid: str) -> None:
        try:
            _c_store(paths, uid)
        except Exception as exc:
            atna.files(paths, node(ae_title), peer, received=False, outcome=SERIOUS_FAILURE, description=str(exc))
            raise
        atna.files(paths, node(ae_title), peer, received=False)

    def _c_store(paths: list[Path], uid: str) -> None:
        import pydicom
        from pynetdicom import AE
        from pynetdicom.sop_class import Comprehensive3DSRStorage, SegmentationStorage

        ae = AE(ae_title=ae_title)
        ae.add_requested_context(SegmentationStorage)
        ae.add_requested_context(Comprehensive3DSRStorage)
        tls_args = (tls, destination.host) if tls is not None else None
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title, tls_args=tls_args)
        if not assoc.is_established:
            raise ResultsRefused(
                f"series {uid}: {destination.ae_title}@{destination.host}:{destination.port} "
                "refused or did not answer the association for the results"
            )
        try:
            for path in paths:
                status = assoc.send_c_store(pydicom.dcmread(str(path)))
                code = getattr(status, "Status", None)
                if code != SUCCESS:
                    raise ResultsRefused(
                        f"series {uid}: {destination.ae_title} answered status "
                        f"{'none' if code is None else hex(code)} to {path.name}"
                    )
        finally:
            assoc.release()

    return send


def stow(pacs) -> Callable[[list[Path], str], None]:
    import pydicom

    def send(paths: list[Path], uid: str) -> None:
        pacs.store([pydicom.dcmread(str(p)) for p in paths], f"the SEG and SR of series {uid}")

    return send
