"""Decode images, and turn them into network inputs: the ONE preprocessing of training, of
the served ensemble and of the in-process baselines.

Two parts, split where the served path splits them:

- decoding (here, numpy and Pillow only): the served ``preprocess`` model checks and decodes
  the file and sends its pixels on at their own size (``pixels_batch``); nothing else in
  Python touches a request;
- resizing and scaling (``brainscan.preprocessing_graph``): an ONNX graph that the served
  networks carry in front of their layers, and that ``to_model_input`` runs with ONNX
  Runtime for training, so both see the same tensor from the same file. The ``local``
  flavour's runners do the same steps with OpenCV (``brainscan.opencv_path``), the reference
  every served graph is held to by the parity gate.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from brainscan import contract
from brainscan.errors import BrainscanError
from brainscan.layout import DICOM_MARKER, DICOM_PREAMBLE

SUPPORTED_FORMATS = ("PNG", "JPEG", "TIFF")


class InvalidImageError(BrainscanError, ValueError):
    """The bytes are not an image this kit accepts; the message names the problem."""


# Signatures of formats people send by mistake, to name them without running their parsers.
_SIGNATURES = (
    (0, b"BM", "BMP"),
    (0, b"GIF8", "GIF"),
    (0, b"8BPS", "PSD (Photoshop)"),
    (8, b"WEBP", "WebP"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (DICOM_PREAMBLE, DICOM_MARKER, "DICOM (send it as a file to `brainscan predict`, which reads DICOM)"),
    (0, b"%PDF", "PDF"),
    (344, b"n+1\x00", "NIfTI (send it to `brainscan predict`, which cuts volumes into slices)"),
)


def _named_format(data: bytes) -> str | None:
    return next((name for offset, magic, name in _SIGNATURES if data[offset : offset + len(magic)] == magic), None)


def _open(data: bytes, max_side: int = contract.MAX_IMAGE_SIDE) -> Image.Image:
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
        raise InvalidImageError(f"not an image: the {len(data)} bytes are not a PNG, JPEG or TIFF file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImageError(f"unreadable image header: {exc}") from None
    if image.format not in SUPPORTED_FORMATS:
        raise InvalidImageError(f"unsupported image format {image.format}: send PNG, JPEG or TIFF")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImageError(f"image has no pixels ({width}x{height})")
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise InvalidImageError(
            f"the {image.format} file holds {frames} images: send one slice per file "
            "(or a volume as NIfTI or a DICOM series)"
        )
    if width * height > contract.MAX_IMAGE_PIXELS or max(width, height) > max_side:
        raise InvalidImageError(
            f"image too large: {width}x{height} = {width * height} pixels; the limit is "
            f"{contract.MAX_IMAGE_PIXELS} pixels and {max_side} per side"
        )
    return image


def image_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) from an image's header, no pixel decoded; None when it is not an image
    this kit reads (the server then names what is wrong with it)."""
    try:
        width, height = _open(data).size
    except InvalidImageError:
        return None
    return int(height), int(width)


def decode_image(data: bytes, max_side: int = contract.MAX_IMAGE_SIDE) -> np.ndarray:
    """Decode PNG/JPEG/TIFF bytes (8/16-bit, grey/RGB/RGBA) into an HxW or HxWxC array.

    Raises InvalidImageError for empty, non-image, truncated or oversized input (more than
    ``max_side`` pixels on a side); the size is checked from the header, before the pixels
    are decoded.
    """
    image = _open(data, max_side)
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


def pixels(image: np.ndarray) -> np.ndarray:
    """A decoded image (HxW or HxWx3, any dtype) as the served ``PIXELS`` of one image:
    float32 [H, W, C], C = 1 for grey, 3 for colour (exact for 8- and 16-bit values)."""
    array = np.asarray(image, dtype=np.float32)
    return array[:, :, None] if array.ndim == 2 else array


def to_model_input(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxW or HxWx3 image to ``size`` (height, width) and scale it to 0..255.

    Area averaging when shrinking on both axes, else linear interpolation; intensities are
    stretched per image (min -> 0, max -> 255), so an 8-bit file and the same picture stored
    as 16-bit give the same tensor, and MRI scanners' arbitrary intensity scales do not
    matter. Runs the preprocessing graph the served networks carry. Returns float32
    [height, width, 3].
    """
    from brainscan.preprocessing_graph import preprocessing_session

    (tensor,) = preprocessing_session(tuple(size)).run(None, {contract.PIXELS: pixels(image)[None]})
    return tensor[0]


def preprocess(data: bytes, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded image bytes -> (model input float32 [h, w, 3], original (height, width))."""
    image = decode_image(data)
    return to_model_input(image, size), (int(image.shape[0]), int(image.shape[1]))


def mask_from_probability(probability: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
    """Segmenter probabilities [h, w] or [h, w, 1] -> binary uint8 mask at (height, width),
    through the mask head the served segmenter carries."""
    from brainscan.preprocessing_graph import SIZE, mask_session

    prob = np.asarray(probability, dtype=np.float32).reshape(1, probability.shape[0], probability.shape[1], 1)
    (mask,) = mask_session().run(None, {contract.SEGMENTER_OUTPUT: prob, SIZE: np.asarray(original_size, np.int64)})
    return mask[0]


def mask_to_target(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ground-truth mask file's pixels (any non-zero is tumour) -> float32 [h, w, 1] of 0/1,
    resized as the images are (a pixel is tumour when at least half its area was)."""
    from brainscan.preprocessing_graph import resize_session

    if mask.ndim == 3:
        mask = mask.max(axis=2)
    binary = (mask > 0).astype(np.float32)
    if binary.shape != tuple(size):
        (binary,) = resize_session(tuple(size)).run(None, {contract.PIXELS: binary[None, :, :, None]})
        binary = binary[0, :, :, 0]
    return (binary >= 0.5).astype(np.float32)[:, :, None]


def pixels_batch(encoded: np.ndarray | list[bytes], max_side: int = contract.MAX_IMAGE_SIDE) -> np.ndarray:
    """What the served ``preprocess`` model does for one request of B encoded images: check
    and decode each, and return their ``PIXELS``, float32 [B, H, W, C]. All images of one
    request must share one height and width (the request's MASK is one [B, H, W] tensor);
    grey images beside colour ones are repeated into three channels, which the networks'
    preprocessing does to a grey image anyway."""
    items = [bytes(x) for x in np.asarray(encoded, dtype=object).reshape(-1)]
    if not items:
        raise InvalidImageError("the request holds no image")
    images = []
    for i, data in enumerate(items):
        try:
            images.append(pixels(decode_image(data, max_side)))
        except InvalidImageError as exc:
            raise InvalidImageError(f"image {i} of the request: {exc}" if len(items) > 1 else str(exc)) from None
    sizes = {image.shape[:2] for image in images}
    if len(sizes) > 1:
        raise InvalidImageError(
            f"the images of one request must share one height and width (got {sorted(sizes)}); "
            "send one image per request"
        )
    if len(images) == 1:
        return images[0][None]
    if len({image.shape[2] for image in images}) > 1:
        images = [np.repeat(image, contract.CHANNELS, axis=2) if image.shape[2] == 1 else image for image in images]
    return np.stack(images)
