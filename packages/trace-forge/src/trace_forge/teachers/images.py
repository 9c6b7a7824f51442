"""Encode each distinct image once per run, at the size the teacher model sees it.

Sending the same bytes every time matters: vLLM's prefix and multimodal caches key on the image content, so a
re-encoded (or differently resized) copy of the root image would miss them on every one of the hundreds of calls a
search makes per question. The encoder resizes to the model's pixel budget (:meth:`Resize.model_size`) *before*
sending, so the server's own processor leaves the image alone and the teacher's coordinates are in the ``model``
frame of :attr:`EncodedImage.geometry`, which converts them back to original pixels.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import weakref
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from PIL import Image

from trace_forge.errors import DataError
from trace_forge.grounding.frames import ImageGeometry, Resize

__all__ = ["ImageRef", "EncodedImage", "ImageEncoder"]

logger = logging.getLogger(__name__)

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True, eq=False)
class ImageRef:
    """An image in a chat: a decoded PIL image or a path to an image file.

    Identity-hashed on purpose: the encoder remembers each ``ImageRef`` object it has seen, so reusing one object
    for a question's image skips even the pixel hash. Two refs to equal pixels still share one encoding.
    """

    source: Image.Image | Path | str

    def open(self) -> Image.Image:
        """The image, decoded (a path is read and fully loaded so the file is closed again)."""
        if isinstance(self.source, Image.Image):
            return self.source
        path = Path(self.source)
        try:
            with Image.open(path) as im:
                im.load()
                return im
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image: {e}", path=path) from e


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent to a teacher.

    Attributes:
        data: the encoded file bytes.
        mime: their media type (``image/png``, ...).
        sha256: hex digest of ``data``: the image's identity in cache keys.
        sent_size: ``(width, height)`` of the sent image, i.e. of the ``model`` frame.
        original_size: ``(width, height)`` of the original image, i.e. of the ``pixel`` frame.
    """

    data: bytes
    mime: str
    sha256: str
    sent_size: tuple[int, int]
    original_size: tuple[int, int]

    @cached_property
    def base64(self) -> str:
        """``data`` in base64, computed once (it is re-sent with every request)."""
        return base64.b64encode(self.data).decode("ascii")

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.base64}"

    @property
    def geometry(self) -> ImageGeometry:
        """Converts teacher coordinates (``model`` frame = pixels of the sent image) to and from ``pixel``."""
        (w, h), (mw, mh) = self.original_size, self.sent_size
        return ImageGeometry(width=w, height=h, model_width=mw, model_height=mh)


class ImageEncoder:
    """Resize-and-encode with a memo, shared by a teacher backend and the cache keys of its client.

    Args:
        resize: the teacher model's pixel budget; None sends images at their original size (API models that
            resize internally, where the ``model`` frame is then the original ``pixel`` frame).
        format: ``"PNG"`` (lossless, the default), ``"JPEG"`` or ``"WEBP"``.

    Example:
        >>> from PIL import Image
        >>> enc = ImageEncoder(Resize(max_pixels=200_000))
        >>> ref = ImageRef(Image.new("RGB", (1000, 500), "white"))
        >>> e = enc.encode(ref)
        >>> e.original_size, e.sent_size
        ((1000, 500), (616, 308))
        >>> enc.encode(ImageRef(Image.new("RGB", (1000, 500), "white"))) is e, enc.encodes
        (True, 1)
    """

    def __init__(self, resize: Resize | None = None, format: str = "PNG") -> None:
        fmt = format.upper()
        if fmt not in _MIME:
            raise ValueError(f"unsupported image format {format!r}; use one of {sorted(_MIME)}")
        self.resize = resize
        self.format = fmt
        self.encodes = 0  # images actually encoded (memo misses), for tests and provenance
        self._by_ref: weakref.WeakKeyDictionary[ImageRef, EncodedImage] = weakref.WeakKeyDictionary()
        self._by_pixels: dict[str, EncodedImage] = {}

    def encode(self, ref: ImageRef) -> EncodedImage:
        """The encoded image for ``ref``; encodes only the first time these pixels are seen.

        Runs synchronously: a large PNG takes tens of milliseconds, paid once per distinct image.
        """
        hit = self._by_ref.get(ref)
        if hit is not None:
            return hit
        image = ref.open()
        key = _pixel_hash(image)
        encoded = self._by_pixels.get(key)
        if encoded is None:
            encoded = self._encode(image)
            self._by_pixels[key] = encoded
        self._by_ref[ref] = encoded
        return encoded

    def geometry(self, ref: ImageRef) -> ImageGeometry:
        """The frames of ``ref`` as this encoder sends it."""
        return self.encode(ref).geometry

    def describe(self) -> dict[str, object]:
        """Provenance: which frame teacher coordinates are in and how images were sized."""
        resize = None
        if self.resize is not None:
            resize = {"min_pixels": self.resize.min_pixels, "max_pixels": self.resize.max_pixels,
                      "factor": self.resize.factor}
        return {"coordinate_frame": "model", "resize": resize, "format": self.format}

    def _encode(self, image: Image.Image) -> EncodedImage:
        original = image.size
        sent = self.resize.model_size(*original) if self.resize is not None else original
        if image.mode not in ("RGB", "RGBA", "L") or (self.format == "JPEG" and image.mode != "RGB"):
            image = image.convert("RGB")
        if sent != original:
            # Bicubic, as the Qwen2-VL image processor resamples, so the pixels match what it would have made.
            image = image.resize(sent, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format=self.format)
        data = buf.getvalue()
        self.encodes += 1
        logger.debug("encoded image %sx%s -> %sx%s (%d bytes)", *original, *sent, len(data))
        return EncodedImage(data=data, mime=_MIME[self.format], sha256=hashlib.sha256(data).hexdigest(),
                            sent_size=sent, original_size=original)


def _pixel_hash(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
