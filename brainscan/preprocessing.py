"""Decode, resize and normalise: the ONE preprocessing used by training, by the served
``preprocess`` model and by in-process baselines, and the mask post-processing.

Only numpy, Pillow and OpenCV are needed here, so the Triton python models import it
without TensorFlow.
"""
from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from brainscan import contract

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF")

# Each Triton python-model instance is single-threaded by design; OpenCV's own pool
# would only fight the other instances for the cores.
cv2.setNumThreads(1)


class InvalidImageError(ValueError):
    """The bytes are not an image this kit accepts; the message names the problem."""


# Signatures of formats people send by mistake, to name them without running their parsers.
_SIGNATURES = (
    (0, b"BM", "BMP"), (0, b"GIF8", "GIF"), (0, b"8BPS", "PSD (Photoshop)"), (8, b"WEBP", "WebP"),
    (4, b"ftypavif", "AVIF"), (4, b"ftypheic", "HEIC"), (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (128, b"DICM", "DICOM (send it as a file to `brainscan predict`, which reads DICOM)"), (0, b"%PDF", "PDF"),
    (344, b"n+1\x00", "NIfTI (send it to `brainscan predict`, which cuts volumes into slices)"),
)


def _named_format(data: bytes) -> str | None:
    return next((name for offset, magic, name in _SIGNATURES if data[offset:offset + len(magic)] == magic), None)


def _open(data: bytes) -> Image.Image:
    """Parse the header only: format and size are known before any pixel is decoded."""
    if not data:
        raise InvalidImageError("empty input: no image bytes were sent")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # only the parsers of the accepted formats read the untrusted header
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidImageError(f"image too large: {exc}") from None
    except UnidentifiedImageError:
        named = _named_format(data)
        if named:
            raise InvalidImageError(f"unsupported image format {named}: send PNG, JPEG or TIFF") from None
        raise InvalidImageError(
            f"not an image: the {len(data)} bytes are not a PNG, JPEG or TIFF file"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"unreadable image header: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImageError(
            f"unsupported image format {image.format}: send PNG, JPEG or TIFF"
        )
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise InvalidImageError(f"the {image.format} file holds {frames} images: send one slice per file "
                                "(or a volume as NIfTI or a DICOM series)")
    if (
        width * height > contract.MAX_IMAGE_PIXELS
        or max(width, height) > contract.MAX_IMAGE_SIDE
    ):
        raise InvalidImageError(
            f"image too large: {width}x{height} = {width * height} pixels; the limit is "
            f"{contract.MAX_IMAGE_PIXELS} pixels and {contract.MAX_IMAGE_SIDE} per side"
        )
    return image


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes (8/16-bit, grey/RGB/RGBA) into an HxW or HxWxC array.

    Raises InvalidImageError for empty, non-image, truncated or oversized input; the size
    is checked from the header, before the pixels are decoded.
    """
    image = _open(data)
    fmt = image.format
    try:
        image.load()
        if image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        array = np.asarray(image)
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImageError(f"cannot decode {fmt} image (truncated or corrupt): {exc}") from None
    if array.ndim == 3 and array.shape[2] in (2, 4):  # grey+alpha, RGBA: drop alpha
        array = array[..., :1] if array.shape[2] == 2 else array[..., :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise InvalidImageError(f"unsupported pixel layout {array.shape} in {fmt} image")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InvalidImageError(f"the {fmt} image holds {bad} NaN or infinite pixel values")
    return array


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW or HxWx3 image to ``size`` (height, width) and scale it to 0..255.

    Intensities are stretched per image (min -> 0, max -> 255), so an 8-bit file and the
    same picture stored as 16-bit give the same tensor, and MRI scanners' arbitrary
    intensity scales do not matter. Returns float32 [height, width, 3].
    """
    pixels = image.astype(np.float32, copy=False)
    height, width = size
    interpolation = (
        cv2.INTER_AREA if pixels.shape[0] >= height and pixels.shape[1] >= width else cv2.INTER_LINEAR
    )
    resized = cv2.resize(pixels, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = np.repeat(resized[:, :, None], contract.CHANNELS, axis=2)
    low, high = float(resized.min()), float(resized.max())
    if high > low:
        resized = (resized - low) * np.float32(255.0 / (high - low))
    else:
        resized = np.zeros_like(resized)
    return np.ascontiguousarray(resized, dtype=np.float32)


def preprocess(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes -> (model input float32 [h, w, 3], original (height, width))."""
    image = decode_image(data)
    return to_model_input(image, size), (int(image.shape[0]), int(image.shape[1]))


def mask_from_probability(probability: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Segmenter probabilities [h, w] or [h, w, 1] -> binary uint8 mask at (height, width)."""
    prob = np.asarray(probability, dtype=np.float32).reshape(probability.shape[0], probability.shape[1])
    height, width = int(original_size[0]), int(original_size[1])
    if (height, width) != prob.shape:
        prob = cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR)
    return (prob > contract.MASK_THRESHOLD).astype(np.uint8)


def mask_to_target(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask file's pixels (any non-zero is tumour) -> float32 [h, w, 1] of 0/1."""
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    binary = (mask > 0).astype(np.float32)
    height, width = size
    if binary.shape != (height, width):
        binary = cv2.resize(binary, (width, height), interpolation=cv2.INTER_AREA)
    return (binary >= 0.5).astype(np.float32)[:, :, None]


def as_network_input(tensor: np.ndarray, dtype) -> np.ndarray:
    """A model-input tensor (0..255 floats) in the dtype a network's config declares: as is
    for FP32; rounded to the nearest level for UINT8 (a quarter of the bytes between steps,
    the cast back to float then inside the network's graph)."""
    if np.dtype(dtype) == np.uint8:
        return np.clip(np.rint(tensor), 0, 255).astype(np.uint8)
    return tensor.astype(dtype, copy=False)


def preprocess_batch(
    encoded: np.ndarray | list[bytes],
    classifier_size: tuple[int, int],
    segmenter_size: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the served ``preprocess`` model does for one request of B encoded images.

    Returns the classifier input [B, h, w, 3], the segmenter input [B, hs, ws, 3] and the
    original sizes [B, 2] (int32). Each image is decoded once; when both networks use the
    same size, the tensor is computed once. All images of one request must share one size,
    because the request's MASK output is one [B, H, W] tensor.
    """
    items = [bytes(x) for x in np.asarray(encoded, dtype=object).reshape(-1)]
    if not items:
        raise InvalidImageError("the request holds no image")
    classifier_inputs, segmenter_inputs, sizes = [], [], []
    for i, data in enumerate(items):
        try:
            image = decode_image(data)
        except InvalidImageError as exc:
            raise InvalidImageError(f"image {i} of the request: {exc}" if len(items) > 1 else str(exc)) from None
        cls = to_model_input(image, classifier_size)
        seg = cls if tuple(segmenter_size) == tuple(classifier_size) else to_model_input(image, segmenter_size)
        classifier_inputs.append(cls)
        segmenter_inputs.append(seg)
        sizes.append(image.shape[:2])
    if len(set(sizes)) > 1:
        raise InvalidImageError(
            f"the images of one request must share one height and width (got {sorted(set(sizes))}); "
            "send one image per request"
        )
    return np.stack(classifier_inputs), np.stack(segmenter_inputs), np.asarray(sizes, dtype=np.int32)


def postprocess_batch(probabilities: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """What the served ``postprocess`` model does: probabilities [B, h, w, 1] and original
    sizes [B, 2] -> binary masks [B, H, W] uint8."""
    sizes = np.asarray(sizes).reshape(-1, 2)
    if len({tuple(s) for s in sizes.tolist()}) > 1:
        raise InvalidImageError("the images of one request must share one height and width")
    return np.stack([mask_from_probability(p, tuple(s)) for p, s in zip(probabilities, sizes)])
