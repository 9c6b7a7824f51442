"""Encode each distinct image once per run, so that the teacher model sees it in a frame known here.

Sending the same bytes every time matters: vLLM's prefix and multimodal caches key on the image content, so a
re-encoded (or differently resized) copy of the root image would miss them on every one of the hundreds of calls a
search makes per question. An image the model's pixel budget would scale (:meth:`Resize.model_size`) is resized
*before* sending, so the server's own processor leaves it alone; either way the teacher's coordinates are in the
``model`` frame of :attr:`EncodedImage.geometry`, which converts them back to original pixels.

An image from a JPEG or PNG file whose resize only rounds its sides to the grid (:meth:`Resize.rounds_only`: the
usual case for V*-size photos under Qwen's 12.8 MP budget) is sent as that file's own bytes, and the server's
processor rounds it to the same ``model`` size. Any server whose bounds hold ours does, which is the condition a
pre-resized image already depends on; the model then sees its own processor's resampling, as in training and
evaluation, and the client skips 50-90 ms of decode, resample and re-encode per 2-4 MP photo (the larger part of its
CPU per question). Otherwise the format is chosen per image (``format="auto"``, :func:`auto_format`): JPEG at
quality 95 for photos, PNG where lossless matters (screenshots with small text). Measured on a bundled V* photo
(1960x1470 JPEG of 214 kB, resized to multiples of 28): PNG 1.53 MB in 0.63 s, JPEG q95 368 kB in 0.03 s, and the
server decodes the JPEG about 8x faster.

Encoding is CPU work, so async code calls :meth:`ImageEncoder.aencode`, which runs it in a worker thread instead of
stalling every request in flight. The memo is bounded (least recently used images are dropped), so a long run's
memory stays flat. An :class:`EncodedImage` also keeps its data URL as a JSON string literal
(:attr:`EncodedImage.data_url_json`), built once and written into every request body of its question as it is.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image

from trace_forge.errors import DataError, image_error
from trace_forge.grounding.frames import ImageGeometry, Resize

if TYPE_CHECKING:
    from trace_forge.tasks import Sample

__all__ = ["ImageRef", "EncodedImage", "ImageEncoder", "IMAGE_FORMATS", "auto_format"]

logger = logging.getLogger(__name__)

_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
IMAGE_FORMATS = ("auto", "png", "jpeg", "webp")  # what ImageEncoder(format=...) and --image-format take
_AS_IS_FORMATS = ("JPEG", "PNG")  # what every chat API and vLLM decode
_AS_IS_MODES = ("RGB", "L")  # decode to the same RGB pixels everywhere (alpha, palettes and CMYK may not)
_EXIF_ORIENTATION = 0x0112
_JPEG_QUALITY = 95  # Pillow's default (75) visibly blurs the small details a grounded step points at
_LOSSLESS_FILES = ("PNG", "BMP", "GIF", "TIFF", "PPM")  # sources whose pixels someone chose to keep exact
# At most this many distinct colours: a screenshot, chart or rendered text, where JPEG rings around the glyphs a
# step may read. Photos exceed it at once (getcolors gives up after 4096 entries: 0.4 ms on a 3 MP photo; a
# 4 MP screenshot with 482 colours takes 12 ms, once per image).
_FEW_COLOURS = 4096


@dataclass(frozen=True, eq=False)
class ImageRef:
    """An image in a chat: a decoded PIL image, a path to an image file, or a function that decodes it.

    Identity-hashed on purpose: the encoder remembers each ``ImageRef`` object it has seen, so reusing one object
    for a question's image skips even the pixel hash. Two refs to equal pixels (or to one file sent as it is) still
    share one encoding.

    Attributes:
        source: the image, the path of its file, or a function returning the image (called only when the encoder
            needs the pixels, so a question in flight does not hold its decoded photo: 9 MB for a V* image).
        file: the image file a PIL or function ``source`` decodes from, pixel for pixel; when the resize at most
            rounds the image to the grid the encoder sends this file's bytes as they are (a path ``source`` is its
            own file), and the file's bytes identify the image in the encoder's memo instead of a hash of its pixels.
    """

    source: Image.Image | Path | str | Callable[[], Image.Image]
    file: Path | str | None = None

    @classmethod
    def of_sample(cls, sample: Sample) -> ImageRef:
        """A task sample's canvas, decoded when needed, tied to its file when the canvas is one image file."""
        only = sample.images[0] if len(sample.images) == 1 else None
        return cls(sample.canvas, file=only if isinstance(only, str | Path) else None)

    @property
    def origin(self) -> Path | None:
        """The file whose bytes may stand for this image, if any."""
        if self.file is not None:
            return Path(self.file)
        return Path(self.source) if isinstance(self.source, str | Path) else None

    def open(self) -> Image.Image:
        """The image, decoded (a path is read and fully loaded so the file is closed again)."""
        if isinstance(self.source, Image.Image):
            return self.source
        if callable(self.source):
            return self.source()
        path = Path(self.source)
        try:
            with Image.open(path) as im:
                im.load()
                return im
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image: {image_error(e)}", path=path) from e


@dataclass(frozen=True)
class EncodedImage:
    """An image as sent to a teacher; make one with :meth:`of`.

    Only the form that is sent is kept, :attr:`data_url_json`: the questions in flight each hold one (a V* photo:
    0.5 MB), and request bodies splice it in as it is, where ``json.dumps`` of a body with a 2 MB data URL cost
    about 15 ms per request for a string that is the same in every request of the question.

    Attributes:
        data_url_json: the data URL of the encoded file as a JSON string literal (quotes included).
        mime: the file's media type (``image/png``, ...).
        sha256: hex digest of the file bytes (:attr:`data`): the image's identity in cache keys.
        model_size: ``(width, height)`` of the ``model`` frame: the sent image as the model's processor sizes it
            (a file sent as it is may still be rounded to the grid by the server).
        original_size: ``(width, height)`` of the original image, i.e. of the ``pixel`` frame.
    """

    data_url_json: bytes
    mime: str
    sha256: str
    model_size: tuple[int, int]
    original_size: tuple[int, int]

    @classmethod
    def of(cls, data: bytes, mime: str, model_size: tuple[int, int], original_size: tuple[int, int],
           sha256: str | None = None) -> EncodedImage:
        """The encoded file ``data`` (its digest computed unless given)."""
        url = b'"data:' + mime.encode() + b";base64," + base64.b64encode(data) + b'"'
        return cls(url, mime, sha256 or hashlib.sha256(data).hexdigest(), model_size, original_size)

    @property
    def base64(self) -> str:
        """The file in base64 (a copy cut from :attr:`data_url_json`)."""
        return self.data_url_json[len(self.mime) + 14:-1].decode("ascii")

    @property
    def data(self) -> bytes:
        """The encoded file bytes (decoded from :attr:`data_url_json`)."""
        return base64.b64decode(self.data_url_json[len(self.mime) + 14:-1])

    @property
    def data_url(self) -> str:
        return f"data:{self.mime};base64,{self.base64}"

    @property
    def geometry(self) -> ImageGeometry:
        """Converts teacher coordinates (``model`` frame) to and from ``pixel``."""
        (w, h), (mw, mh) = self.original_size, self.model_size
        return ImageGeometry(width=w, height=h, model_width=mw, model_height=mh)


class ImageEncoder:
    """Resize-and-encode with a memo, shared by a teacher backend and the cache keys of its client.

    Thread-safe, so that :meth:`aencode` can encode in a worker thread while the event loop reads the memo.

    Args:
        resize: the teacher model's pixel budget; None sends images at their original size (API models that
            resize internally, where the ``model`` frame is then the original ``pixel`` frame).
        format: what resized or file-less images are encoded as: ``"auto"`` (the default: per image, see
            :func:`auto_format`), ``"png"`` (always lossless), ``"jpeg"`` (quality 95) or ``"webp"``; any case.
        max_images: distinct encoded images kept besides those of live :class:`ImageRef` objects (least
            recently used dropped first); it bounds the memory of a long run.

    Example:
        >>> from PIL import Image
        >>> enc = ImageEncoder(Resize(max_pixels=200_000))
        >>> ref = ImageRef(Image.new("RGB", (1000, 500), "white"))
        >>> e = enc.encode(ref)
        >>> e.original_size, e.model_size
        ((1000, 500), (616, 308))
        >>> enc.encode(ImageRef(Image.new("RGB", (1000, 500), "white"))) is e, enc.encodes
        (True, 1)
    """

    def __init__(self, resize: Resize | None = None, format: str = "auto", *, max_images: int = 64) -> None:
        fmt = format.upper()
        if fmt.lower() not in IMAGE_FORMATS:
            raise ValueError(f"unsupported image format {format!r}; use one of {', '.join(IMAGE_FORMATS)}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.resize = resize
        self.format = fmt
        self.max_images = max_images
        self.encodes = 0  # images prepared for sending (memo misses), for tests and provenance
        self._lock = threading.Lock()
        # Decoding, resizing and encoding run in worker threads; left unbounded, a burst of new questions (a search
        # starts hundreds at once, each with a 3 MP photo: 0.1 s of CPU) takes every core and starves the event
        # loop that keeps the teacher busy. One core stays free for it.
        self._workers = threading.BoundedSemaphore(max(1, (os.cpu_count() or 2) - 1))
        # A live ref keeps its encoding (a question in flight never pays twice); the LRU serves equal images
        # behind other refs and forgets old ones.
        self._by_ref: weakref.WeakKeyDictionary[ImageRef, EncodedImage] = weakref.WeakKeyDictionary()
        self._recent: OrderedDict[str, EncodedImage] = OrderedDict()

    def encode(self, ref: ImageRef) -> EncodedImage:
        """The encoded image for ``ref``; encodes only when these pixels are not in the memo.

        Runs in the calling thread: a large image can take seconds, so async code uses :meth:`aencode`.
        """
        with self._lock:
            hit = self._by_ref.get(ref)
        if hit is not None:
            return hit
        as_is, file_sha = self._original_file(ref)
        if as_is is not None:
            key = "file:" + as_is.sha256
        elif file_sha is not None and callable(ref.source):  # its file says which pixels: no 9 MB pixel hash
            key = "decoded:" + file_sha
        else:
            key = None
        with self._lock:
            encoded = self._recent.get(key) if key is not None else None
        if encoded is None:
            if as_is is not None:
                encoded = as_is
            else:
                with self._workers:
                    image = ref.open()
                    key = key if key is not None else _pixel_hash(image)
                    with self._lock:
                        encoded = self._recent.get(key)
                    if encoded is None:
                        encoded = self._encode(image, self._format_for(ref, image))
        with self._lock:
            if key in self._recent:  # a hit, or another thread finished the same image first: share its object
                encoded = self._recent[key]
                self._recent.move_to_end(key)
            else:
                self.encodes += 1
                self._recent[key] = encoded
                if len(self._recent) > self.max_images:
                    self._recent.popitem(last=False)
            self._by_ref[ref] = encoded
        return encoded

    async def aencode(self, ref: ImageRef) -> EncodedImage:
        """:meth:`encode` without blocking the event loop: a memo hit returns at once, a miss runs in a thread."""
        with self._lock:
            hit = self._by_ref.get(ref)
        return hit if hit is not None else await asyncio.to_thread(self.encode, ref)

    def geometry(self, ref: ImageRef) -> ImageGeometry:
        """The frames of ``ref`` as this encoder sends it."""
        return self.encode(ref).geometry

    def describe(self) -> dict[str, object]:
        """Provenance: which frame teacher coordinates are in and how images were sized."""
        resize = None
        if self.resize is not None:
            resize = {"min_pixels": self.resize.min_pixels, "max_pixels": self.resize.max_pixels,
                      "factor": self.resize.factor}
        return {"coordinate_frame": "model", "resize": resize, "format": self.format.lower()}

    def _original_file(self, ref: ImageRef) -> tuple[EncodedImage | None, str | None]:
        """``ref``'s file as it is, when its bytes can be sent unchanged (else None), and the file's SHA-256.

        That is a JPEG or PNG whose pixels every decoder turns into the same RGB image (no alpha, palette or
        EXIF rotation) at a size the resize at most rounds to the grid, and, for a PIL ``source``, of the same size.
        """
        path = ref.origin
        if path is None:
            return None, None
        try:
            data = path.read_bytes()
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                fmt, mode, size = im.format, im.mode, im.size
                rotated = _EXIF_ORIENTATION in im.getexif()
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError on some broken headers
            raise DataError(f"cannot read image: {image_error(e)}", path=path) from e
        sha = hashlib.sha256(data).hexdigest()
        if fmt not in _AS_IS_FORMATS or mode not in _AS_IS_MODES or rotated:
            return None, sha
        if isinstance(ref.source, Image.Image) and ref.source.size != size:
            return None, sha
        if self.resize is None:
            return EncodedImage.of(data, _MIME[fmt], size, size, sha), sha
        if not self.resize.rounds_only(*size):  # the server would not scale it as we do: send it scaled
            return None, sha
        return EncodedImage.of(data, _MIME[fmt], self.resize.model_size(*size), size, sha), sha

    def _format_for(self, ref: ImageRef, image: Image.Image) -> str:
        if self.format != "AUTO":
            return self.format
        source = None
        if ref.origin is not None:
            try:
                with Image.open(ref.origin) as im:  # the header only
                    source = im.format
            except (OSError, ValueError, SyntaxError):
                source = None  # a PIL source whose file went away: judge by the pixels
        return auto_format(image, source)

    def _encode(self, image: Image.Image, fmt: str) -> EncodedImage:
        original = image.size
        sent = self.resize.model_size(*original) if self.resize is not None else original
        if image.mode not in ("RGB", "RGBA", "L") or (fmt == "JPEG" and image.mode != "RGB"):
            image = image.convert("RGB")
        if sent != original:
            # Bicubic, as the Qwen2-VL image processor resamples, so the pixels match what it would have made.
            image = image.resize(sent, Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        image.save(buf, format=fmt, **({"quality": _JPEG_QUALITY} if fmt == "JPEG" else {}))
        data = buf.getvalue()
        logger.debug("encoded image %sx%s -> %sx%s as %s (%d bytes)", *original, *sent, fmt, len(data))
        return EncodedImage.of(data, _MIME[fmt], sent, original)


def auto_format(image: Image.Image, source_format: str | None = None) -> str:
    """The format ``format="auto"`` sends an image in: ``"PNG"`` or ``"JPEG"``.

    The rule, in order:

    1. a JPEG source file stays JPEG (its pixels are already lossy; PNG would only multiply the bytes);
    2. a lossless source file (PNG, BMP, GIF, TIFF, PPM) stays PNG: screenshots of GUI benchmarks are PNG files,
       and JPEG would smear the small text a step points at;
    3. an image without a file (a composed canvas, a crop) is PNG when it has at most 4096 distinct colours
       (screenshots, charts, rendered text) and JPEG otherwise (photos).

    Images with transparency are PNG (JPEG has no alpha).

    Example:
        >>> auto_format(Image.new("RGB", (64, 64), "white"))
        'PNG'
        >>> auto_format(Image.merge("RGB", [Image.effect_noise((100, 100), 60 + b) for b in range(3)]))
        'JPEG'
        >>> auto_format(Image.new("RGB", (64, 64)), "JPEG")
        'JPEG'
    """
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        return "PNG"
    if source_format == "JPEG":
        return "JPEG"
    if source_format in _LOSSLESS_FILES:
        return "PNG"
    return "PNG" if image.getcolors(_FEW_COLOURS) is not None else "JPEG"


def _pixel_hash(image: Image.Image) -> str:
    h = hashlib.sha256(f"{image.mode}:{image.width}x{image.height}:".encode())
    h.update(image.tobytes())
    return h.hexdigest()
