"""A site's rules file: the served models' intended use narrowed for one site (never
widened): `--rules FILE` on `brainscan predict` and `brainscan listen` (docs/intended-use.md)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from brainscan.intended_use import IntendedUse, RulesError, load_json_object, value_range
from brainscan.series_header import Plane

# The keys of a site's rules file, each of which can only narrow (docs/intended-use.md).
RULE_KEYS = (
    "modalities",
    "planes",
    "plane_tolerance_deg",
    "body_parts",
    "refused_image_types",
    "pixel_spacing_mm",
    "image_side",
    "slices",
    "series_refusal_fraction",
    "pixel_threshold",
)


def read_rules(path: Path) -> dict:
    """A site's rules file: one JSON object of ``RULE_KEYS``; RulesError (exit 2) otherwise.
    Read before anything is sent; ``narrow`` checks its values against what the
    server declares."""
    rules = load_json_object(path)
    unknown = sorted(set(rules) - set(RULE_KEYS))
    if unknown:
        raise RulesError(f"{path}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(RULE_KEYS)}")
    return rules


def _subset(path: Path, key: str, given, declared: tuple, upper: bool = True) -> tuple:
    """A list that names only what ``declared`` holds."""
    if not isinstance(given, list) or not given:
        raise RulesError(f"{path}: {key} must be a non-empty list")
    values = tuple(str(v).upper() if upper else str(v) for v in given)
    wider = [v for v in values if v not in declared]
    if wider:
        raise RulesError(
            f"{path}: {key} {', '.join(wider)} is outside the models' intended use ({', '.join(declared)})"
        )
    return values


def _within(path: Path, key: str, given, declared: tuple | None, kind) -> tuple:
    """A [low, high] inside ``declared``."""
    pair = value_range(given, f"{path}: {key}", kind) if not isinstance(given, str) else None
    if pair is None:
        raise RulesError(f"{path}: {key} must be [low, high]")
    if declared is not None and (pair[0] < declared[0] or pair[1] > declared[1]):
        raise RulesError(
            f"{path}: {key} [{pair[0]:g}, {pair[1]:g}] is wider than the models' intended use "
            f"[{declared[0]:g}, {declared[1]:g}]"
        )
    return pair


def _at_most(path: Path, key: str, given, declared: float) -> float:
    """A number from 0 to ``declared``."""
    if not isinstance(given, (int, float)) or isinstance(given, bool) or given < 0:
        raise RulesError(f"{path}: {key} must be a number of at least 0")
    if given > declared:
        raise RulesError(f"{path}: {key} {given:g} is above the models' {declared:g}: a rules file only narrows")
    return float(given)


def narrow(use: IntendedUse, path: Path) -> IntendedUse:
    """``use`` with a site's rules file applied (``RULE_KEYS``; see
    docs/intended-use.md). Raises RulesError (exit 2) for an unknown key, a malformed
    value, or a rule that would take more than the models were made for."""
    rules = read_rules(path)
    changes: dict = {"narrowed_by": str(path)}

    try:
        for key, given in rules.items():
            if key in ("modalities", "body_parts"):
                changes[key] = _subset(path, key, given, getattr(use, key))
            elif key == "planes":
                planes = _subset(path, key, given, tuple(str(p) for p in use.planes), upper=False)
                changes[key] = tuple(Plane(p) for p in planes)
            elif key == "refused_image_types":
                if not isinstance(given, list):
                    raise RulesError(f"{path}: {key} must be a list")
                changes[key] = tuple(dict.fromkeys([*use.refused_image_types, *(str(v).upper() for v in given)]))
            elif key == "plane_tolerance_deg":
                changes[key] = _at_most(path, key, given, use.plane_tolerance_deg)
            elif key == "series_refusal_fraction":
                changes[key] = _at_most(path, key, given, use.series_refusal_fraction)
            elif key == "pixel_threshold":
                if use.pixel_gate is None:
                    raise RulesError(f"{path}: pixel_threshold given, but the served models have no pixel gate")
                threshold = _at_most(path, key, given, use.pixel_gate.threshold)
                changes["pixel_gate"] = dataclasses.replace(use.pixel_gate, threshold=threshold)
            elif key == "pixel_spacing_mm":
                changes[key] = _within(path, key, given, use.pixel_spacing_mm, float)
            else:  # image_side, slices
                changes[key] = _within(path, key, given, getattr(use, key), int)
    except ValueError as exc:
        raise RulesError(f"{path}: {exc}") from None
    return dataclasses.replace(use, **changes)
