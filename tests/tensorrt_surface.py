"""The TensorRT Python API as type stubs, per major version, for mypy.

The 10.x surface is NVIDIA's bindings as published in the ``tensorrt-stubs`` wheel
(10.13.0.35.1, generated from the real module), with its few syntax slips mended so mypy can
read it (parameters named ``in``, a parameter without default after one with). The 11.x
surface is the same minus what TensorRT 11 removed from the Python bindings: weak typing
(the FP16/BF16/INT8/FP8/INT4/FP4 and precision-constraint builder flags, layer precisions
and output types, writable tensor types, dynamic ranges) and the EXPLICIT_BATCH creation
flag. That list was read from NVIDIA/TensorRT at tag v11.1 (python/src/infer/pyCore.cpp,
pyGraph.cpp) against v10.13.3.
"""

from __future__ import annotations

import keyword
import re
import shutil
from pathlib import Path

REMOVED_IN_11 = {
    "BuilderFlag": [
        "BF16",
        "FP16",
        "FP4",
        "FP8",
        "INT4",
        "INT8",
        "OBEY_PRECISION_CONSTRAINTS",
        "PREFER_PRECISION_CONSTRAINTS",
        "WEIGHTLESS",
    ],
    "NetworkDefinitionCreationFlag": ["EXPLICIT_BATCH"],
    "ILayer": [
        "precision",
        "precision_is_set",
        "reset_precision",
        "set_output_type",
        "output_type_is_set",
        "reset_output_type",
    ],
    "ITensor": ["dynamic_range", "set_dynamic_range", "reset_dynamic_range"],
}
READ_ONLY_IN_11 = {"ITensor": ["dtype"]}  # the setter is gone; reading stays


def _split_params(text: str) -> list[str]:
    params, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            params.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        params.append(current.strip())
    return params


def _mend_signature(line: str) -> str:
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*->.*)$", line)
    if not match:
        return line
    mended, seen_default = [], False
    for param in _split_params(match.group(2)):
        name = re.split(r"[:=]", param, maxsplit=1)[0].strip().lstrip("*")
        if keyword.iskeyword(name):
            param = param.replace(name, name + "_", 1)
        if "=" in param:
            seen_default = True
        elif seen_default and not param.startswith("*") and param != "/":
            param += " = ..."
        mended.append(param)
    return match.group(1) + ", ".join(mended) + match.group(3)


def _class_blocks(lines: list[str]) -> dict[str, tuple[int, int]]:
    starts = [
        (i, re.match(r"^class (\w+)", line).group(1)) for i, line in enumerate(lines) if re.match(r"^class \w+", line)
    ]
    return {
        name: (start, starts[k + 1][0] if k + 1 < len(starts) else len(lines)) for k, (start, name) in enumerate(starts)
    }


def _without_members(lines: list[str], cls: str, members: list[str], read_only: list[str]) -> list[str]:
    start, end = _class_blocks(lines)[cls]
    body, out, skipping = lines[start:end], [], False
    for line in body:
        member = re.match(r"^    (?:def )?(\w+)\b", line)
        if member:  # a new member at class level ends whatever was being skipped
            skipping = member.group(1) in members
            if member.group(1) in read_only and not line.startswith("    def"):
                type_ = line.split(":", 1)[1].strip()
                out += ["    @property", f"    def {member.group(1)}(self) -> {type_}: ..."]
                continue
        elif line.startswith("    @"):
            skipping = False
        if not skipping:
            out.append(line)
    return lines[:start] + out + lines[end:]


def write_surfaces(stubs: Path, out: Path) -> dict[str, Path]:
    """MYPYPATH folders for the 10.x and 11.x surfaces, made from the installed stubs."""
    source = (Path(stubs) / "tensorrt_bindings" / "tensorrt.pyi").read_text().splitlines()
    mended = [_mend_signature(line) for line in source]
    eleven = mended
    for cls, members in REMOVED_IN_11.items():
        eleven = _without_members(eleven, cls, members, READ_ONLY_IN_11.get(cls, []))
    for cls, members in READ_ONLY_IN_11.items():
        if cls not in REMOVED_IN_11:
            eleven = _without_members(eleven, cls, [], members)
    surfaces = {}
    for major, lines in (("10", mended), ("11", eleven)):
        root = Path(out) / f"tensorrt{major}"
        for package in ("tensorrt", "tensorrt_bindings"):
            shutil.copytree(Path(stubs) / package, root / package, dirs_exist_ok=True)
        (root / "tensorrt_bindings" / "tensorrt.pyi").write_text("\n".join(lines) + "\n")
        surfaces[major] = root
    return surfaces
