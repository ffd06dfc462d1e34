"""The record of one answered input: what `brainscan predict` prints (JSON lines, CSV, the
table), writes (``<name>.summary.json``, ``<name>.refused.json``) and audits, in one type.

Three shapes share it: an image's, a volume's or DICOM series' (with its ``VolumeSummary``
and per-slice figures), and a refusal's (outside the intended use: the label
``NOT_ANALYSED``, no probability, no mask). Its JSON lists the fields in the order below and
leaves out those that do not apply; ``probability`` is always there (null for a refusal).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from brainscan.client.imaging.volumes import VolumeSummary
from brainscan.layout import InputKind

NOT_ANALYSED = "not analysed"  # the label of an input outside the intended use
ALWAYS = ("file", "kind", "probability", "label")  # in every record, null or not


@dataclass
class PredictRecord:
    file: str
    kind: InputKind
    probability: float | None  # the tumour probability (a series': its highest slice's); None: refused
    label: str  # "tumour", "no tumour", or NOT_ANALYSED
    area_pixels: int | None = None
    area_fraction: float | None = None
    height: int | None = None  # an image's
    width: int | None = None
    volume: VolumeSummary | None = None  # a volume's or series' mask, its fields spliced in here
    slice_probabilities: list[float] | None = None
    intended_use: dict | None = None  # Verdict.as_dict()
    slice_scores: list[float] | None = None  # out-of-distribution score of each slice
    slices_not_analysed: list[int] | None = None  # slices of an accepted series unlike the training data
    segmented_slices: int | None = None  # how many the gated segmenter ran on
    outside_intended_use: bool = False  # analysed anyway (research): every output says so
    notes: list[str] | None = None  # what reading the volume noticed
    truth: str | None = None  # --evaluate: "tumour" or "no tumour" from the ground truth beside it
    dice: float | None = None
    study: str | None = None  # a DICOM series' StudyInstanceUID, SeriesInstanceUID
    series: str | None = None
    seg: str | None = None  # SOPInstanceUID of its DICOM SEG, of its SR
    sr: str | None = None
    outputs: list[str] | None = None  # the files written for it
    stored: str | bool | None = None  # the DICOMweb root it went to, True (C-STORE), or "already answered"
    store_attempts: int | None = None  # tries of the store, when more than one

    @property
    def analysed(self) -> bool:
        return self.label != NOT_ANALYSED

    def as_dict(self) -> dict:
        record: dict = {}
        for each in fields(self):
            value = getattr(self, each.name)
            if each.name == "volume":
                record.update(value.as_dict() if value is not None else {})
            elif each.name in ALWAYS or (value is not None and value is not False):
                record[each.name] = value
        return record
