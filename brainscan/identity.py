"""What answered: the served networks as the server's own model configs describe them
(``ModelIdentity``), which results carry (DICOM SR, audit lines) and a re-run compares."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from brainscan import contract


def kit_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("brainscan")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class ModelIdentity:
    """What answered, as the server's own model configs describe it (model config is not an
    admin API): each network's platform, the SHA-256 of its served ONNX graph, and on a GPU
    each listed engine's TensorRT version, GPU and source digest. Results carry it (DICOM SR,
    audit lines), and a re-run compares it to tell a result of the same models."""

    networks: dict[str, dict[str, str]]
    kit: str = field(default_factory=kit_version)

    @property
    def digest(self) -> str:
        """16 hex digits that change whenever a served network does."""
        text = json.dumps(self.networks, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self) -> list[str]:
        """One line per network, for people."""
        lines = []
        for network, facts in sorted(self.networks.items()):
            details = [facts.get("platform", "?")]
            if facts.get(contract.MODEL_SHA256_PARAMETER):
                details.append(f"ONNX sha256 {facts[contract.MODEL_SHA256_PARAMETER]}")
            details += [
                value for key, value in sorted(facts.items()) if key.startswith(contract.ENGINE_PARAMETER_PREFIX)
            ]
            lines.append(f"{network}: {'; '.join(details)}")
        return lines

    def as_dict(self) -> dict:
        return {"kit": f"brainscan {self.kit}", "digest": self.digest, "networks": self.networks}


def identity_facts(config: dict) -> dict[str, str]:
    facts = {"platform": config.get("platform") or config.get("backend") or "?"}
    for key, value in (config.get("parameters") or {}).items():
        if key == contract.MODEL_SHA256_PARAMETER or key.startswith(contract.ENGINE_PARAMETER_PREFIX):
            facts[key] = value.get("string_value", "") if isinstance(value, dict) else str(value)
    return facts
