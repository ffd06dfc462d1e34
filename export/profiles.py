"""The optimization profile of a served network, derived from its Triton model config.

A TensorRT engine serves only the shapes of its optimization profile. The served networks
take ``PIXELS``, the decoded image at its own size ([N, H, W, C], C 1 or 3), and Triton's
dynamic batcher sends any batch from 1 to the config's ``max_batch_size``, so the profile
spans batch 1 … max, images 1 x 1 … the config's largest side, one or three channels (an
engine built for batch 1 only is the classic "dimension 0 between 1 and 1" error). Both the
TensorRT engines and the onnxruntime flavour's TensorRT execution provider take their
profile from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from brainscan.contract import MAX_SIDE_PARAMETER
from brainscan.errors import BrainscanError

# The image the profiles are tuned for (TensorRT's "opt"): MRI slices are most often
# 256 x 256, one channel.
OPT_IMAGE = (256, 256, 1)


class ProfileError(BrainscanError, ValueError):
    """A config from which no valid optimization profile follows."""


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
    def from_dict(cls, data: dict) -> Profile:
        return cls(data["input"], tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))


def image_profile(
    input_name: str,
    max_batch_size: int,
    max_side: int,
    opt_batch: int | None = None,
    opt_image: tuple[int, int, int] = OPT_IMAGE,
) -> Profile:
    """Batch 1 … ``max_batch_size`` of images from 1 x 1 to ``max_side`` x ``max_side`` with
    one to three channels. The optimum is ``opt_image`` (a 256 x 256 grey slice, the common
    MRI case) at ``max_batch_size``: under load Triton's dynamic batcher fills batches towards
    it, so that is where TensorRT should time its kernels; every other shape still runs."""
    if max_batch_size < 1:
        raise ProfileError(f"{input_name}: max_batch_size must be at least 1 for a batch profile, got {max_batch_size}")
    opt = max_batch_size if opt_batch is None else opt_batch
    if not 1 <= opt <= max_batch_size:
        raise ProfileError(f"{input_name}: optimum batch {opt} is outside 1..{max_batch_size}")
    if max_side < max(opt_image[:2]):
        raise ProfileError(f"{input_name}: the largest side {max_side} is below the optimum image {opt_image[:2]}")
    channels = 3
    return Profile(input_name, (1, 1, 1, 1), (opt, *opt_image), (max_batch_size, max_side, max_side, channels))


def profile_from_config(config, opt_batch: int | None = None) -> Profile:
    """The profile of a network's ModelConfig (one input, batching enabled, the largest
    image side in its ``max_image_side`` parameter)."""
    if len(config.input) != 1:
        raise ProfileError(f"{config.name}: expected one input, the config has {len(config.input)}")
    if MAX_SIDE_PARAMETER not in config.parameters:
        raise ProfileError(
            f"{config.name}: the config has no {MAX_SIDE_PARAMETER} parameter; write the configs again "
            "with `brainscan export repository --flavour tensorrt`"
        )
    side = int(config.parameters[MAX_SIDE_PARAMETER].string_value)
    return image_profile(config.input[0].name, config.max_batch_size, side, opt_batch)
