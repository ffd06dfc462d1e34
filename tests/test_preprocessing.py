"""The one preprocessing function: formats the contract accepts, and bad input refused
with a message naming the problem, before any large allocation."""

from __future__ import annotations

import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from conftest import encode

from brainscan import contract
from brainscan.preprocessing import (
    InvalidImageError,
    decode_image,
    mask_from_probability,
    pixels_batch,
    preprocess,
)

SIZE = (64, 64)


def brain_like(height=90, width=70, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    ellipse = ((yy - height / 2) / (height * 0.4)) ** 2 + ((xx - width / 2) / (width * 0.4)) ** 2 < 1
    return (ellipse * rng.uniform(80, 250, (height, width))).astype(np.uint8)


@pytest.mark.parametrize(
    "fmt,mode",
    [("PNG", "L"), ("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "L"), ("JPEG", "RGB"), ("TIFF", "L"), ("TIFF", "RGB")],
)
def test_accepted_formats_decode_to_model_input_and_keep_original_size(fmt, mode):
    grey = brain_like()
    pixels = {"L": grey, "RGB": np.stack([grey] * 3, -1), "RGBA": np.dstack([grey] * 3 + [np.full_like(grey, 255)])}[
        mode
    ]
    tensor, original = preprocess(encode(pixels, fmt), SIZE)
    assert original == (90, 70)
    assert tensor.shape == (*SIZE, 3) and tensor.dtype == np.float32
    assert tensor.min() == 0.0 and tensor.max() == pytest.approx(255.0)


def test_sixteen_bit_png_gives_the_same_tensor_as_its_eight_bit_original():
    grey = brain_like()
    eight, _ = preprocess(encode(grey, "PNG"), SIZE)
    sixteen, _ = preprocess(encode(grey.astype(np.uint16) * 257, "PNG"), SIZE)
    assert decode_image(encode(grey.astype(np.uint16) * 257, "PNG")).dtype == np.uint16
    np.testing.assert_allclose(sixteen, eight, atol=1e-3)


def test_sixteen_bit_tiff_keeps_its_full_range():
    raw = (brain_like().astype(np.uint16) * 13 + 1000).astype(np.uint16)
    decoded = decode_image(encode(raw, "TIFF"))
    assert decoded.dtype == np.uint16 and decoded.max() == raw.max()


def test_rgba_alpha_channel_is_ignored():
    grey = brain_like()
    opaque = np.dstack([grey] * 3 + [np.full_like(grey, 255)])
    transparent = np.dstack([grey] * 3 + [np.zeros_like(grey)])
    np.testing.assert_array_equal(
        preprocess(encode(opaque, "PNG"), SIZE)[0], preprocess(encode(transparent, "PNG"), SIZE)[0]
    )


def png_header_claiming(width: int, height: int) -> bytes:
    """A syntactically valid PNG whose IHDR claims width x height (and holds one tiny IDAT)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "data,words",
    [
        (b"", "empty"),
        (b"hello, I am not an image", "not an image"),
        (b"GIF89a" + bytes(100), "unsupported image format GIF"),
        (png_header_claiming(100_000, 100_000), "too large"),  # 10 gigapixels
        (png_header_claiming(9_000, 9_000), "too large"),  # above our limit, below Pillow's own
        (png_header_claiming(40_000, 10), "too large"),  # one side too long
    ],
)
def test_bad_input_is_refused_with_a_message_naming_the_problem(data, words):
    with pytest.raises(InvalidImageError, match=words):
        preprocess(data, SIZE)


def test_truncated_files_are_refused():
    for fmt in ("PNG", "JPEG", "TIFF"):
        data = encode(brain_like(200, 200), fmt)
        with pytest.raises(InvalidImageError, match="truncated|corrupt|cannot decode|unreadable"):
            preprocess(data[: len(data) // 2], SIZE)


def test_gigapixel_header_is_refused_without_allocating_the_claimed_size():
    data = png_header_claiming(60_000, 60_000)
    tracemalloc.start()
    with pytest.raises(InvalidImageError):
        decode_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 10 * 1024 * 1024


def test_unsupported_format_is_named():
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(brain_like()).save(buffer, format="BMP")
    with pytest.raises(InvalidImageError, match="BMP"):
        decode_image(buffer.getvalue())


def _tiff_float(values: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_float_tiff_holding_nan_or_infinity_is_refused(bad):
    values = brain_like().astype(np.float32)
    values[10:12, 20:23] = bad
    with pytest.raises(InvalidImageError, match="holds 6 NaN or infinite pixel values"):
        decode_image(_tiff_float(values))
    assert decode_image(_tiff_float(brain_like().astype(np.float32))).dtype == np.float32  # finite floats are fine


def test_several_images_in_one_file_are_refused():
    import io

    from PIL import Image

    pages = [Image.fromarray(brain_like(seed=k)).convert("RGB") for k in range(3)]
    for fmt, words in (
        ("TIFF", "the TIFF file holds 3 images: send one slice per file"),
        ("MPO", "unsupported image format MPO"),
    ):  # a JPEG with more pictures in it
        buffer = io.BytesIO()
        pages[0].save(buffer, format=fmt, save_all=True, append_images=pages[1:])
        with pytest.raises(InvalidImageError, match=words):
            decode_image(buffer.getvalue())


@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: encode(brain_like(), "WEBP"), "WebP"),
        (lambda: b"8BPS\x00\x01" + bytes(20), "PSD"),
        (lambda: encode(brain_like(), "GIF"), "GIF"),
        (lambda: bytes(128) + b"DICM" + bytes(64), "DICOM"),
    ],
)
def test_other_formats_are_named_without_running_their_parsers(make, name):
    with pytest.raises(InvalidImageError, match=f"unsupported image format {name}.*send PNG, JPEG or TIFF"):
        decode_image(make())


def test_mask_comes_back_at_the_original_size_and_is_binary():
    probability = np.zeros((64, 64, 1), np.float32)
    probability[16:48, 16:48] = 0.9
    mask = mask_from_probability(probability, (300, 200))
    assert mask.shape == (300, 200) and mask.dtype == np.uint8
    assert set(np.unique(mask)) == {0, 1}
    # the square covers the middle half of each axis at the original size too
    assert mask[150, 100] == 1 and mask[10, 10] == 0


def test_one_request_holds_images_of_one_size_and_mixes_grey_with_colour():
    a, b = encode(brain_like(90, 70), "PNG"), encode(brain_like(80, 80), "PNG")
    colour = encode(np.stack([brain_like(90, 70, seed=1)] * 3, -1), "PNG")
    grey = pixels_batch(np.array([[a], [a]], dtype=object))
    assert grey.shape == (2, 90, 70, 1) and grey.dtype == np.float32
    np.testing.assert_array_equal(grey[0, :, :, 0], brain_like(90, 70))  # the decoded values, as they are
    mixed = pixels_batch(np.array([[a], [colour]], dtype=object))
    assert mixed.shape == (2, 90, 70, 3)  # grey repeated into three channels beside a colour image
    np.testing.assert_array_equal(mixed[0, :, :, 2], brain_like(90, 70))
    with pytest.raises(InvalidImageError, match="one height and width"):
        pixels_batch(np.array([[a], [b]], dtype=object))


def test_bad_image_in_a_batch_names_its_position():
    good = encode(brain_like(), "PNG")
    with pytest.raises(InvalidImageError, match="image 1 of the request: empty"):
        pixels_batch(np.array([[good], [b""]], dtype=object))


def test_sixteen_bit_values_reach_the_networks_exactly():
    raw = np.array([[0, 4000], [65535, 12345]], np.uint16)
    pixels = pixels_batch([encode(raw, "PNG")])
    assert pixels.dtype == np.float32 and pixels[0, :, :, 0].tolist() == [[0, 4000], [65535, 12345]]


def test_a_server_with_a_smaller_largest_side_refuses_larger_images_by_name():
    data = encode(brain_like(90, 1100), "PNG")
    with pytest.raises(InvalidImageError, match="90 = 99000 pixels; the limit is .* and 1024 per side"):
        pixels_batch([data], max_side=1024)
    assert pixels_batch([data]).shape == (1, 90, 1100, 1)


def test_pixel_limit_is_the_contracts():
    side = int(contract.MAX_IMAGE_PIXELS**0.5) + 1
    with pytest.raises(InvalidImageError, match=str(contract.MAX_IMAGE_PIXELS)):
        decode_image(png_header_claiming(side, side))
