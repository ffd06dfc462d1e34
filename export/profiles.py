"""The batch profile of a network, derived from its Triton model config.

A TensorRT engine serves only the shapes of its optimization profile. Triton's dynamic
batcher sends any batch from 1 to the config's ``max_batch_size``, so the profile must
span exactly that range (an engine built for batch 1 only is the classic "dimension 0
between 1 and 1" error). Both the TensorRT engines and the onnxruntime flavour's
TensorRT execution provider take their profile from here.
"""
from __future__ import annotations

from dataclasses import dataclass


class ProfileError(ValueError):
    """A config from which no valid batch profile follows."""


@dataclass(frozen=True)
class Profile:
    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    @property
    def max_batch(self) -> int:
        return self.max[0]

    def as_dict(self) -> dict:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        return cls(data["input"], tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def batch_profile(input_name: str, dims: tuple[int, ...], max_batch_size: int, opt_batch: int | None = None) -> Profile:
    """Batch 1 … ``max_batch_size`` over fixed per-image ``dims``. The optimum defaults to
    ``max_batch_size``: under load Triton's dynamic batcher fills batches towards it, so
    that is where TensorRT should time its kernels; batch 1 still runs."""
    if max_batch_size < 1:
        raise ProfileError(f"{input_name}: max_batch_size must be at least 1 for a batch profile, got {max_batch_size}")
    if not dims or any(d < 1 for d in dims):
        raise ProfileError(f"{input_name}: every non-batch dimension must be fixed, got {list(dims)}")
    opt = max_batch_size if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch_size:
        raise ProfileError(f"{input_name}: optimum batch {opt} is outside 1..{max_batch_size}")
    dims = tuple(int(d) for d in dims)
    return Profile(input_name, (1, *dims), (opt, *dims), (max_batch_size, *dims))


def profile_from_config(config, opt_batch: int | None = None) -> Profile:
    """The profile of a network's ModelConfig (one input, batching enabled)."""
    if len(config.input) != 1:
        raise ProfileError(f"{config.name}: expected one input, the config has {len(config.input)}")
    tensor = config.input[0]
    return batch_profile(tensor.name, tuple(tensor.dims), config.max_batch_size, opt_batch)
