"""The records written beside build outputs, one class each: what an FP16 graph and a
TensorRT engine were made from and how, written once as JSON and read back through the same
class (`brainscan doctor`, the engine build, a client's description of what answered)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from brainscan import contract
from brainscan.atomic import write_bytes_atomic

ENGINE_RECORD = "engine.json"  # the record of the plan a config names for any GPU (contract.PLAN_FILE)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class _Record:
    """JSON in and out; a field an older record lacks reads as its default. Every record
    names its network, the nodes kept in FP32, the gate's report, when it was made and the
    format it was written in (FORMAT, one number per class)."""

    FORMAT: ClassVar[int]
    network: str = "?"
    fp32_nodes: list[str] = field(default_factory=list)
    gate: dict = field(default_factory=dict)
    made_at: str = field(default_factory=_now)

    def write(self, path: Path) -> None:
        values = {**dataclasses.asdict(self), "format": self.FORMAT}
        write_bytes_atomic(path, (json.dumps(values, indent=2) + "\n").encode())

    @classmethod
    def from_dict(cls, values: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        # formats before Fp16Record 2 and EngineRecord 4 named the time after the step
        made_at = values.get("made_at") or values.get("converted_at") or values.get("built_at") or "?"
        return cls(**{k: v for k, v in values.items() if k in known and k != "made_at"}, made_at=made_at)

    @classmethod
    def read(cls, path: Path):
        """The record at ``path``, or None when there is none."""
        path = Path(path)
        return cls.from_dict(json.loads(path.read_text())) if path.exists() else None


@dataclass
class Fp16Record(_Record):
    """Beside ``model.fp16.onnx`` (``brainscan export fp16``): the graph it came from, the
    converter, the nodes kept in FP32 and the accuracy gate's report."""

    source_onnx: str = ""
    source_sha256: str = ""
    fp16_onnx: str = ""
    fp16_sha256: str = ""
    keep_fp32: list[str] = field(default_factory=list)
    fp16_nodes: int = 0
    float_nodes: int = 0
    converter: str = ""
    FORMAT = 2

    @staticmethod
    def path_for(fp16_onnx: Path) -> Path:
        """``model.fp16.onnx`` -> ``model.fp16.json``."""
        return Path(fp16_onnx).with_suffix(".json")


@dataclass
class EngineRecord(_Record):
    """Beside each TensorRT plan: enough to tell whether the plan still fits a server. First
    what `brainscan doctor` compares with the server and the config (TensorRT, GPU, profile),
    then what the plan was built from, then how."""

    tensorrt_version: str = "?"
    gpu_name: str = "?"
    compute_capability: str = "?"
    profile: dict = field(default_factory=dict)
    onnx_file: str = ""
    onnx_sha256: str = ""
    fp32_onnx_sha256: str = ""
    precision: str = "fp16 graph, strongly typed"
    workspace_mib: int = 0
    build_seconds: float = 0.0
    FORMAT = 4

    @staticmethod
    def name_for(plan: str) -> str:
        """Where the record of ``plan`` is: model.sm89.plan -> model.sm89.json."""
        return ENGINE_RECORD if plan == contract.PLAN_FILE else f"{plan.removesuffix('.plan')}.json"

    @classmethod
    def of_plan(cls, version_dir: Path, plan: str = contract.PLAN_FILE) -> EngineRecord | None:
        return cls.read(Path(version_dir) / cls.name_for(plan))

    def description(self) -> str:
        """One line a client can read from the config about the engine: TensorRT version,
        GPU, compute capability, digest of the FP16 graph."""
        return (
            f"TensorRT {self.tensorrt_version}; {self.gpu_name}; compute capability "
            f"{self.compute_capability}; FP16 ONNX sha256 {self.onnx_sha256}"
        )
