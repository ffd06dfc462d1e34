"""The models' intended use: what the served networks were made for, declared once and
shipped with them, and the rules that keep every other input from getting a result.

- ``IntendedUse``: what `brainscan export onnx` declares from the training run (its
  dataset's card, ``brainscan.dataset_card``; the image sizes seen; the pixel gate fitted on
  the training slices) and ships in the served classifier graph and its Triton config
  (``contract.INTENDED_USE_PARAMETER``), where clients read it; a site's rules file may
  narrow it (``brainscan.site_rules``).
- The checks: ``check_series`` on a series' DICOM headers, before any pixel is sent;
  ``check_image`` on an image's size; ``check_score`` on the out-of-distribution score the
  served classifier computes for every image (``contract.OOD_SCORE``). Each refusal is a
  ``Reason``: a short stable code and a sentence.

Pure Python and numpy: the client, the export steps and the docs all read it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from brainscan.contract import Choice
from brainscan.errors import BrainscanError, UsageError
from brainscan.series_header import Plane, SeriesHeader, plane_of

INTENDED_USE_FILE = "intended_use.json"  # beside a training run's served graph
ONNX_METADATA_KEY = "brainscan.intended_use"  # in the served classifier graph's metadata_props
FORMAT = 1


class Code(Choice):
    """Why an input is outside the intended use: stable codes that audit lines, JSON records
    and the DICOM SR carry."""

    MODALITY = "modality"  # the series' Modality is not one the models were trained on
    IMAGE_TYPE = "image-type"  # a localizer, or a derived or secondary image
    PLANE = "plane"  # the slices are not in the trained plane (within the tolerance)
    BODY_PART = "body-part"  # BodyPartExamined names another body part
    SLICES = "slices"  # too few or too many slices for a series
    PIXEL_SPACING = "pixel-spacing"  # in-plane spacing outside the declared range
    IMAGE_SIZE = "image-size"  # image side outside the declared range
    PIXELS = "pixels"  # the image's out-of-distribution score is above the threshold
    SERIES_PIXELS = "series-pixels"  # too many of a series' slices fail the pixel gate


# What each code says, in the SR's coded reasons (private coding scheme of the kit).
CODE_MEANINGS = {
    Code.MODALITY: "Modality outside the intended use",
    Code.IMAGE_TYPE: "Image type outside the intended use",
    Code.PLANE: "Image plane outside the intended use",
    Code.BODY_PART: "Body part outside the intended use",
    Code.SLICES: "Slice count outside the intended use",
    Code.PIXEL_SPACING: "Pixel spacing outside the intended use",
    Code.IMAGE_SIZE: "Image size outside the intended use",
    Code.PIXELS: "Image unlike the training data",
    Code.SERIES_PIXELS: "Series unlike the training data",
}
CODING_SCHEME = "99BRAINSCAN"  # a private coding scheme designator (PS3.16 8.2: "99" + name)


class IntendedUseError(BrainscanError, ValueError):
    """A declaration or a site's rules file that cannot be read or applied; exit 2 when it is
    the user's file (``RulesError``)."""


class RulesError(IntendedUseError, UsageError):
    """A site's rules file is malformed, names an unknown key, or would widen the intended use."""


@dataclass(frozen=True)
class Reason:
    """Why one input (an image, a slice or a series) is outside the intended use."""

    code: Code
    text: str

    def as_dict(self) -> dict:
        return {"code": str(self.code), "text": self.text}


@dataclass(frozen=True)
class Verdict:
    """The intended-use answer for one input: accepted, or refused with its reasons; the
    out-of-distribution score when the pixels were seen (None for a refusal on headers)."""

    accepted: bool
    reasons: tuple[Reason, ...] = ()
    score: float | None = None
    threshold: float | None = None

    @classmethod
    def of(cls, reasons: Iterable[Reason], score: float | None = None, threshold: float | None = None) -> Verdict:
        reasons = tuple(reasons)
        return cls(not reasons, reasons, score, threshold)

    @property
    def codes(self) -> list[str]:
        return [str(r.code) for r in self.reasons]

    def as_dict(self) -> dict:
        """What every JSON record carries under "intended_use"."""
        out = {
            "accepted": self.accepted,
            "reasons": [r.as_dict() for r in self.reasons],
            "score": None if self.score is None else round(float(self.score), 4),
        }
        if self.threshold is not None:
            out["threshold"] = round(float(self.threshold), 4)
        return out

    def sentence(self) -> str:
        return "; ".join(r.text for r in self.reasons)


def value_range(value, what: str, kind=float) -> tuple | None:
    if value is None:
        return None
    try:
        low, high = (kind(v) for v in value)
    except (TypeError, ValueError):
        raise IntendedUseError(f"{what} must be [low, high], got {value!r}") from None
    if not low <= high:
        raise IntendedUseError(f"{what} must be [low, high] with low <= high, got {value!r}")
    return (low, high)


@dataclass(frozen=True)
class PixelGate:
    """The out-of-distribution score the served classifier computes for every image, and the
    threshold above which an image is refused (fitted at export, ``brainscan.export.pixel_gate``)."""

    method: str  # how the score is computed, for people
    threshold: float
    fitted_on: int  # training slices the statistics come from
    validation_slices: int  # validation slices the threshold was set on
    validation_accepted: float  # their share under the threshold
    validation_scores: dict[str, float] = field(default_factory=dict)  # median, p99, max

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def load_json_object(path: Path) -> dict:
    try:
        values = json.loads(Path(path).read_text())
    except OSError as exc:
        raise RulesError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise RulesError(f"{path} is not JSON: {exc}") from None
    if not isinstance(values, dict):
        raise RulesError(f"{path} must hold one JSON object")
    return values


# what a server that declares no intended use (a repository of an earlier kit) is held to
UNDECLARED = "not declared by the server (a repository of an earlier kit): the kit's header rules, no pixel gate"


@dataclass(frozen=True)
class IntendedUse:
    """What the served networks answer. Every range is [low, high], both included; None
    means not declared (that rule is not checked)."""

    description: str = "brain MR slices"
    modalities: tuple[str, ...] = ("MR",)
    planes: tuple[Plane, ...] = (Plane.AXIAL,)
    plane_tolerance_deg: float = 30.0  # oblique slices up to this far from the plane pass
    body_parts: tuple[str, ...] = ("BRAIN", "HEAD")  # BodyPartExamined values taken (absent passes)
    refused_image_types: tuple[str, ...] = ("LOCALIZER", "DERIVED", "SECONDARY")
    pixel_spacing_mm: tuple[float, float] | None = None
    image_side: tuple[int, int] | None = None  # shorter and longer side, pixels
    slices: tuple[int, int] = (1, 2048)
    # a series is refused when more than this share of its slices fail the pixel gate
    series_refusal_fraction: float = 0.5
    pixel_gate: PixelGate | None = None
    seen_in_training: dict = field(default_factory=dict)  # facts of the training data, for people
    narrowed_by: str | None = None  # the site's rules file applied, if any

    # --- as JSON ----------------------------------------------------------------------------

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["planes"] = [str(p) for p in self.planes]
        for key in ("modalities", "body_parts", "refused_image_types"):
            out[key] = list(out[key])
        for key in ("pixel_spacing_mm", "image_side", "slices"):
            out[key] = list(out[key]) if out[key] is not None else None
        return {"format": FORMAT, **out}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict, where: str = "the intended use") -> IntendedUse:
        values = dict(values)
        values.pop("format", None)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise IntendedUseError(f"{where}: unknown key(s) {', '.join(unknown)}")
        try:
            for key in ("modalities", "body_parts", "refused_image_types"):
                if key in values:
                    values[key] = tuple(str(v).upper() for v in values[key])
            if "planes" in values:
                values["planes"] = tuple(Plane(p) for p in values["planes"])
            gate = values.get("pixel_gate")
            values["pixel_gate"] = PixelGate(**gate) if gate else None
        except (TypeError, ValueError) as exc:
            raise IntendedUseError(f"{where} is malformed: {exc}") from None
        for key, kind in (("pixel_spacing_mm", float), ("image_side", int), ("slices", int)):
            if key in values:
                values[key] = value_range(values[key], f"{where}: {key}", kind)
        return cls(**values)

    @classmethod
    def from_json(cls, text: str, where: str = "the intended use") -> IntendedUse:
        try:
            return cls.from_dict(json.loads(text), where)
        except json.JSONDecodeError as exc:
            raise IntendedUseError(f"{where} is not JSON: {exc}") from None

    def write(self, path: Path) -> Path:
        from brainscan.atomic import write_bytes_atomic

        write_bytes_atomic(Path(path), (json.dumps(self.as_dict(), indent=1, sort_keys=True) + "\n").encode())
        return Path(path)

    # --- the checks -------------------------------------------------------------------------

    @property
    def threshold(self) -> float | None:
        return self.pixel_gate.threshold if self.pixel_gate else None

    def check_image(self, height: int, width: int) -> list[Reason]:
        """An image's (or a slice's) size against the declared sides."""
        if self.image_side is None:
            return []
        low, high = self.image_side
        short, long = sorted((int(height), int(width)))
        if short < low or long > high:
            return [
                Reason(
                    Code.IMAGE_SIZE,
                    f"the image is {height}x{width} pixels; the models take sides of {low} to {high} pixels",
                )
            ]
        return []

    def check_score(self, score: float) -> list[Reason]:
        """The served out-of-distribution score of one image against the threshold."""
        threshold = self.threshold
        if threshold is None or (math.isfinite(score) and score <= threshold):
            return []
        return [
            Reason(
                Code.PIXELS,
                f"the pixels are unlike the training data (out-of-distribution score {score:.3g} above "
                f"{threshold:.3g})",
            )
        ]

    def series_score(self, slice_scores: list[float]) -> float:
        """A series' score: the slice score that ``series_refusal_fraction`` of its slices
        exceed. The series passes the pixel gate when it is under the threshold, that is
        when at most that share of its slices fail."""
        import numpy as np

        if not slice_scores:
            return 0.0
        scores = np.nan_to_num(np.asarray(slice_scores, float), nan=np.inf)
        return float(np.quantile(scores, 1.0 - self.series_refusal_fraction, method="higher"))

    def check_series_scores(self, slice_scores: list[float]) -> list[Reason]:
        threshold = self.threshold
        if threshold is None or not slice_scores:
            return []
        failed = sum(1 for s in slice_scores if not (math.isfinite(s) and s <= threshold))
        if failed <= self.series_refusal_fraction * len(slice_scores):
            return []
        return [
            Reason(
                Code.SERIES_PIXELS,
                f"{failed} of {len(slice_scores)} slices are unlike the training data (out-of-distribution score "
                f"above {threshold:.3g}); more than {self.series_refusal_fraction:.0%} refuses the series",
            )
        ]

    def check_series(self, header: SeriesHeader) -> list[Reason]:
        """A series' DICOM headers against the declared modality, image types, plane, body
        part, slice count and pixel spacing."""
        reasons = []
        if header.modality is not None and self.modalities and header.modality.upper() not in self.modalities:
            reasons.append(
                Reason(
                    Code.MODALITY,
                    f"the series is {header.modality or 'of no modality'}; the models read "
                    f"{' or '.join(self.modalities)}",
                )
            )
        refused = sorted(t for t in header.image_types if t in self.refused_image_types)
        if refused:
            reasons.append(
                Reason(Code.IMAGE_TYPE, f"ImageType {', '.join(refused)}: not an original acquisition the models read")
            )
        if header.orientation is not None and self.planes:
            plane, angle = plane_of(header.orientation, self.planes)
            if angle > self.plane_tolerance_deg:
                actual, _ = plane_of(header.orientation)
                reasons.append(
                    Reason(
                        Code.PLANE,
                        f"the slices are {actual} ({angle:.0f}° from {plane}); the models read "
                        f"{' or '.join(str(p) for p in self.planes)} slices (within {self.plane_tolerance_deg:g}°)",
                    )
                )
        body = header.body_part.strip().upper()
        if body and self.body_parts and body not in self.body_parts:
            reasons.append(
                Reason(Code.BODY_PART, f"BodyPartExamined is {body}; the models read {' or '.join(self.body_parts)}")
            )
        low, high = self.slices
        if not low <= header.slices <= high:
            reasons.append(
                Reason(Code.SLICES, f"the series has {header.slices} slices; the models take {low} to {high}")
            )
        if self.pixel_spacing_mm is not None and header.pixel_spacing_mm is not None:
            low_mm, high_mm = self.pixel_spacing_mm
            spacing = header.pixel_spacing_mm
            if min(spacing) < low_mm or max(spacing) > high_mm:
                reasons.append(
                    Reason(
                        Code.PIXEL_SPACING,
                        f"the pixels are {spacing[0]:.3g} x {spacing[1]:.3g} mm; the models were trained on "
                        f"{low_mm:.3g} to {high_mm:.3g} mm",
                    )
                )
        if header.rows and header.columns:
            reasons += self.check_image(header.rows, header.columns)
        return reasons

    def describe(self) -> list[str]:
        """The declaration, one line per rule, for people (doctor, health, the model card)."""
        lines = [
            f"made for: {self.description}",
            f"modality: {', '.join(self.modalities)}",
            f"plane: {', '.join(str(p) for p in self.planes)} (within {self.plane_tolerance_deg:g}°)",
            f"body part (when given): {', '.join(self.body_parts)}",
            f"refused image types: {', '.join(self.refused_image_types)}",
            "pixel spacing: "
            + (f"{self.pixel_spacing_mm[0]:g} to {self.pixel_spacing_mm[1]:g} mm" if self.pixel_spacing_mm else "any"),
            "image side: " + (f"{self.image_side[0]} to {self.image_side[1]} pixels" if self.image_side else "any"),
            f"slices per series: {self.slices[0]} to {self.slices[1]}",
        ]
        gate = self.pixel_gate
        if gate is None:
            lines.append("pixel gate: none (the served classifier has no fitted gate: every image passes)")
        else:
            lines.append(
                f"pixel gate: {gate.method}; refused above {gate.threshold:.4g} "
                f"({gate.validation_accepted:.1%} of {gate.validation_slices} validation slices accepted; "
                f"fitted on {gate.fitted_on} training slices); a series is refused when more than "
                f"{self.series_refusal_fraction:.0%} of its slices are"
            )
        if self.narrowed_by:
            lines.append(f"narrowed by the rules file {self.narrowed_by}")
        return lines
