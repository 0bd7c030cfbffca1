"""WeChat's image limits met by conversion (adapters/wechat/images.py, Pillow), never by failing the article."""

from __future__ import annotations

import hashlib
import io
import random

import pytest
from PIL import Image

from adapters.wechat.adapter import BODY_IMAGE_MAX_BYTES, BODY_IMAGE_TYPES, COVER_MAX_BYTES, COVER_TYPES
from adapters.wechat.images import ImageRefused, fit_image
from syndicate.media import MediaBlob


def press_photo(width: int = 2400, height: int = 1600, fmt: str = "JPEG", mode: str = "RGB", **save: object) -> bytes:
    """A photo-like image (noise over gradients: it compresses as badly as a real one)."""
    rng = random.Random(7)
    image = Image.new(mode, (width, height))
    pixels = [
        (
            x * 255 // width,
            y * 255 // height,
            rng.randrange(256),
            *((rng.randrange(128, 256),) if mode == "RGBA" else ()),
        )
        for y in range(height)
        for x in range(width)
    ]
    image.putdata(pixels)  # type: ignore[arg-type]  # tuples per band, as Pillow takes them
    out = io.BytesIO()
    image.save(out, fmt, **save)
    return out.getvalue()


def blob(data: bytes, content_type: str, name: str = "photo.jpg") -> MediaBlob:
    return MediaBlob(
        url=f"http://127.0.0.1/{name}",
        content_type=content_type,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        filename=name,
    )


def opened(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data))


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    data = press_photo(quality=97)
    assert len(data) > BODY_IMAGE_MAX_BYTES  # a normal press photo: over WeChat's 1 MB for body images
    return data


def test_an_image_that_fits_is_sent_byte_for_byte(big_jpeg: bytes) -> None:
    small = press_photo(320, 200, quality=80)
    original = blob(small, "image/jpeg")
    assert fit_image(original, max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES) is original
    cover = blob(big_jpeg, "image/jpeg")
    assert fit_image(cover, max_bytes=COVER_MAX_BYTES, types=COVER_TYPES) is cover  # under the cover's 10 MB


def test_a_press_photo_over_1_mb_becomes_a_jpeg_under_it_at_full_size(big_jpeg: bytes) -> None:
    fitted = fit_image(blob(big_jpeg, "image/jpeg"), max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES)
    assert fitted.content_type == "image/jpeg" and len(fitted.data) <= BODY_IMAGE_MAX_BYTES
    assert opened(fitted.data).format == "JPEG"
    assert fitted.sha256 == hashlib.sha256(fitted.data).hexdigest() and fitted.filename == "photo.jpg"
    width, height = opened(fitted.data).size
    assert width >= 1200 and width / height == pytest.approx(1.5, rel=0.01)  # quality first, pixels last


@pytest.mark.parametrize(
    ("fmt", "content_type", "mode"),
    [("WEBP", "image/webp", "RGB"), ("GIF", "image/gif", "P"), ("BMP", "image/bmp", "RGB")],
)
def test_formats_wechat_refuses_for_the_body_are_converted(fmt: str, content_type: str, mode: str) -> None:
    data = press_photo(600, 400, "PNG")
    image = opened(data).convert(mode)
    out = io.BytesIO()
    image.save(out, fmt)
    fitted = fit_image(
        blob(out.getvalue(), content_type, "x." + fmt.lower()), max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES
    )
    assert fitted.content_type in BODY_IMAGE_TYPES and len(fitted.data) <= BODY_IMAGE_MAX_BYTES
    assert opened(fitted.data).format in ("JPEG", "PNG") and opened(fitted.data).size == (600, 400)


def test_a_webp_cover_becomes_one_add_material_takes() -> None:
    out = io.BytesIO()
    opened(press_photo(800, 450, "PNG")).save(out, "WEBP")
    fitted = fit_image(blob(out.getvalue(), "image/webp", "cover.webp"), max_bytes=COVER_MAX_BYTES, types=COVER_TYPES)
    assert fitted.content_type == "image/jpeg" and fitted.filename == "cover.jpg"


def test_transparency_is_kept_as_png_where_png_is_allowed() -> None:
    data = press_photo(300, 200, "WEBP", mode="RGBA")
    fitted = fit_image(blob(data, "image/webp", "logo.webp"), max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES)
    assert fitted.content_type == "image/png" and opened(fitted.data).mode == "RGBA"


def test_only_when_quality_is_not_enough_the_pixels_shrink() -> None:
    data = press_photo(1600, 1200, "PNG")
    fitted = fit_image(blob(data, "image/png", "huge.png"), max_bytes=60_000, types=("image/jpeg",))
    assert len(fitted.data) <= 60_000 and opened(fitted.data).size[0] < 1600


def test_bytes_that_are_no_image_are_refused_with_the_reason() -> None:
    with pytest.raises(ImageRefused, match="not an image"):
        fit_image(blob(b"<html>not found</html>", "image/webp"), max_bytes=BODY_IMAGE_MAX_BYTES, types=BODY_IMAGE_TYPES)
