"""Images for WeChat's limits, with Pillow: a photo WeChat would refuse (over 1 MB for the body, a GIF, a WebP...)
becomes one it takes, at the highest quality that fits, instead of failing the whole article.

``media/uploadimg`` (body images) takes only JPEG/PNG under 1 MB; ``material/add_material`` (the cover) BMP, PNG,
JPEG or GIF up to 10 MB (docs/platforms.md). ``fit_image`` leaves an image that already fits byte for byte; else
it re-encodes: PNG where transparency matters and PNG is allowed, JPEG otherwise (transparency on white), trying
high quality first and shrinking the pixels only when quality alone cannot reach the size.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import PurePosixPath

from PIL import Image, ImageOps, UnidentifiedImageError

from syndicate.media import MediaBlob

#: JPEG qualities tried, best first; below the last the pixels shrink instead (a smaller sharp image reads better
#: than a large blocky one).
QUALITIES = (92, 85, 78, 70)
#: Each shrink keeps this share of the width and height, at most this many times.
SHRINK = 0.8
MAX_SHRINKS = 12
#: Pillow's guard against decompression bombs, stated here: no press photo is bigger.
Image.MAX_IMAGE_PIXELS = 60_000_000

_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png"}


class ImageRefused(ValueError):
    """The bytes are no image Pillow can read (or one too large to decode): nothing to convert."""


def fit_image(blob: MediaBlob, *, max_bytes: int, types: tuple[str, ...]) -> MediaBlob:
    """``blob`` unchanged when its type is in ``types`` and it is at most ``max_bytes``; else re-encoded (and, only
    if need be, downscaled) as JPEG or PNG, whichever ``types`` allows, to fit."""
    if blob.content_type in types and len(blob.data) <= max_bytes:
        return blob
    try:
        with Image.open(io.BytesIO(blob.data)) as opened:
            opened.seek(0)  # an animation's first frame: WeChat's body and cover images are stills
            image = ImageOps.exif_transpose(opened.copy())
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError) as exc:
        raise ImageRefused(f"not an image Pillow can read: {exc}") from exc
    keep_alpha = "image/png" in types and _has_alpha(image)
    target = "image/png" if keep_alpha or "image/jpeg" not in types else "image/jpeg"
    if target not in types:
        raise ImageRefused(f"WeChat takes {', '.join(types)} here; none is a format this converter writes")
    for _ in range(MAX_SHRINKS + 1):
        for data in _encodings(image, target):
            if len(data) <= max_bytes:
                return _blob(blob, target, data)
        width, height = image.size
        if width < 64 or height < 64:
            break
        image = image.resize((max(1, int(width * SHRINK)), max(1, int(height * SHRINK))), Image.Resampling.LANCZOS)
    raise ImageRefused(f"cannot be brought under {max_bytes} bytes as {target}")


def _has_alpha(image: Image.Image) -> bool:
    if image.mode in ("RGBA", "LA", "PA"):
        return image.getextrema()[-1][0] < 255  # type: ignore[index]  # per-band (min, max); the last band is alpha
    return image.mode == "P" and "transparency" in image.info


def _encodings(image: Image.Image, target: str) -> Iterator[bytes]:
    """The image encoded as ``target``, best quality first (lazily: the first that fits ends the search)."""
    if target == "image/png":
        out = io.BytesIO()
        image.convert("RGBA" if _has_alpha(image) else "RGB").save(out, "PNG", optimize=True)
        yield out.getvalue()
        return
    flat = _on_white(image)
    for quality in QUALITIES:
        out = io.BytesIO()
        flat.save(out, "JPEG", quality=quality, optimize=True, progressive=True)
        yield out.getvalue()


def _on_white(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def _blob(original: MediaBlob, content_type: str, data: bytes) -> MediaBlob:
    stem = PurePosixPath(original.filename).stem or "image"
    return MediaBlob(
        url=original.url,
        content_type=content_type,
        data=data,
        sha256=hashlib.sha256(data).hexdigest(),
        filename=stem + _EXTENSIONS[content_type],
    )
