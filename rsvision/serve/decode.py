"""Request bodies to images, and what the server refuses.

An image arrives as the raw body of a request or as a file field of a multipart form. It is
decoded as :func:`rsvision.load` reads files (:func:`rsvision.data.datasets.read_rgb`): in
the frame it is shown in, its EXIF orientation applied (a phone's portrait photo, stored
sideways, comes out upright), and 16-bit, float, grey, palette and RGBA images converted to
8-bit RGB (:func:`rsvision.data.transforms.eight_bit`, then
Pillow's ``convert("RGB")``). Before any pixel is decoded, the size Pillow reads from the
header is checked against the pixel limit, so a 10,000 x 10,000 image costs nothing. A
JPEG whose view needs only a smaller image is decoded at the smallest 1/2, 1/4 or 1/8
scale still at least that size (Pillow's ``draft``: the decoder skips the work).

Every refusal is a :class:`BadInput`: an HTTP status and one line naming what is wrong.
"""

from __future__ import annotations

import io
import math

from PIL import Image, ImageOps, UnidentifiedImageError

from rsvision.data.transforms import eight_bit

#: Content types taken as an image file in the body; ``application/x-www-form-urlencoded`` is
#: what ``curl --data-binary @img.png`` sends unless told otherwise.
RAW_TYPES = ("application/octet-stream", "application/x-www-form-urlencoded")
MULTIPART = "multipart/form-data"


class BadInput(Exception):
    """A request the server refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def body_kind(content_type: str | None) -> str:
    """``"raw"`` or ``"multipart"`` for a request's content type; 415 for any other type."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not media or media.startswith("image/") or media in RAW_TYPES:
        return "raw"
    if media == MULTIPART:
        return "multipart"
    raise BadInput(415, f"content type {media}: send the image file as the body (image/*, application/octet-stream) or as a {MULTIPART} file field")


def decode_image(body: bytes, max_pixels: int, shorter_side: int | None = None, what: str = "request body") -> Image.Image:
    """``body`` as an 8-bit RGB image; a JPEG drafted down towards ``shorter_side`` when given.

    Raises :class:`BadInput`: 400 for an empty body, a file that is not an image or one that
    is truncated or corrupt; 413 for an image over ``max_pixels``.
    """
    if not body:
        raise BadInput(400, f"{what}: empty; send an image file (PNG, JPEG, ...) as the body or as a multipart file field")
    try:
        image = Image.open(io.BytesIO(body))
    except UnidentifiedImageError:
        raise BadInput(400, f"{what}: not an image file Pillow can read ({len(body)} bytes)") from None
    except Image.DecompressionBombError as exc:
        raise BadInput(413, f"{what}: {exc}") from None
    except Exception as exc:  # Pillow's header parsers raise many types on corrupt data
        raise BadInput(400, f"{what}: corrupt image header ({type(exc).__name__}: {exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadInput(413, f"{what}: a {width}x{height} image ({width * height / 1e6:.1f} Mpixel) is over the limit of {max_pixels / 1e6:g} Mpixel")
    if shorter_side is not None and image.format == "JPEG" and min(width, height) > shorter_side:
        scale = shorter_side / min(width, height)
        image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return eight_bit(image).convert("RGB")
    except Exception as exc:  # truncated or corrupt data: OSError, SyntaxError, zlib.error, ...
        raise BadInput(400, f"{what}: truncated or corrupt {image.format or 'image'} file ({type(exc).__name__}: {exc})") from None
