"""What a dataset's slices are (``DatasetCard``, ``dataset.json`` beside them), and the
intended use of networks trained on it (``from_training``), which `brainscan export onnx`
declares."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from brainscan.intended_use import IntendedUse, IntendedUseError, PixelGate, load_json_object, value_range
from brainscan.series_header import Plane

DATASET_CARD = "dataset.json"  # beside a dataset's slices: what they are


@dataclass(frozen=True)
class DatasetCard:
    """What a dataset's slices are, for the intended use of models trained on it."""

    description: str = "brain MR slices"
    modality: str = "MR"
    plane: Plane = Plane.AXIAL
    body_part: str = "BRAIN"
    pixel_spacing_mm: tuple[float, float] | None = None  # in-plane, the range the slices have

    def as_dict(self) -> dict:
        return {
            "description": self.description,
            "modality": self.modality,
            "plane": str(self.plane),
            "body_part": self.body_part,
            "pixel_spacing_mm": list(self.pixel_spacing_mm) if self.pixel_spacing_mm else None,
        }

    def write(self, folder: Path) -> Path:
        path = Path(folder) / DATASET_CARD
        path.write_text(json.dumps(self.as_dict(), indent=1) + "\n")
        return path

    @classmethod
    def read(cls, folder: Path) -> DatasetCard | None:
        """The card of the dataset in ``folder``, or None when it has none."""
        path = Path(folder) / DATASET_CARD
        if not path.exists():
            return None
        values = load_json_object(path)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise IntendedUseError(f"{path}: unknown key(s) {', '.join(unknown)}")
        try:
            values["plane"] = Plane(values.get("plane", Plane.AXIAL))
        except ValueError:
            raise IntendedUseError(f"{path}: plane must be one of {', '.join(Plane)}") from None
        values["pixel_spacing_mm"] = value_range(values.get("pixel_spacing_mm"), f"{path}: pixel_spacing_mm")
        return cls(**values)


def from_training(
    card: DatasetCard | None, sides: Iterable[tuple[int, int]], gate: PixelGate | None, slices: int
) -> IntendedUse:
    """The intended use of networks trained on a dataset: its card (MR, axial, brain by
    default), the image sizes its slices have (accepted from half the smallest side to four
    times the largest), the pixel spacing it declares (accepted from half to twice) and the
    fitted pixel gate."""
    card = card or DatasetCard()
    sides = [tuple(sorted(s)) for s in sides]
    seen: dict = {"dataset": card.description, "slices": slices}
    image_side = None
    if sides:
        short, long = min(s[0] for s in sides), max(s[1] for s in sides)
        seen["image_side"] = [short, long]
        image_side = (max(1, short // 2), long * 4)
    spacing = None
    if card.pixel_spacing_mm:
        seen["pixel_spacing_mm"] = list(card.pixel_spacing_mm)
        spacing = (round(card.pixel_spacing_mm[0] / 2, 4), round(card.pixel_spacing_mm[1] * 2, 4))
    return IntendedUse(
        description=card.description,
        modalities=(card.modality.upper(),),
        planes=(card.plane,),
        body_parts=tuple(
            dict.fromkeys([card.body_part.upper(), *(("HEAD",) if card.body_part.upper() == "BRAIN" else ())])
        ),
        pixel_spacing_mm=spacing,
        image_side=image_side,
        pixel_gate=gate,
        seen_in_training=seen,
    )
