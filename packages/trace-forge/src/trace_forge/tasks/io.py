"""Reading benchmark files: JSON, JSONL, parquet and images, with errors that name the file and record at fault.

Every loader reads its records through :class:`Record`, whose accessors raise :class:`RecordError` (a
:class:`~trace_forge.errors.DataError` with a short ``reason``). A :class:`SkipPolicy` decides what happens to such an
error: re-raise it, or, with ``skip_bad``, count it under its reason and log it. Errors about a whole file (missing,
unreadable parquet, missing column) are plain ``DataError`` and always raise, since skipping them would silently drop
a whole benchmark split.

Images are checked when a record is read (the file exists, its header decodes, and it is not over the pixel limit)
and fully decoded only when first opened (:func:`open_image`), so loading a benchmark stays cheap while a corrupt
file is still reported by name.

Pixel limit: an image over :func:`max_image_pixels` (by default 89,478,485 pixels, about 9459 x 9459: PIL's own
warning level, far above ViGoRL's benchmarks: V* up to ~8 MP, ScreenSpot-Pro ~20 MP, HR-Bench 8K ~33 MP) is refused
as a likely decompression bomb: a few kilobytes of file that decode to gigabytes. Set the environment variable
``TRACE_FORGE_MAX_IMAGE_PIXELS`` to a larger number of pixels, or to 0 for no limit, to allow genuine large images.

Text files must be UTF-8: a file or line that is not is reported with its line (and, in JSONL, skippable).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from PIL import Image

from trace_forge.errors import ConfigError, DataError, image_error
from trace_forge.grounding import Box

__all__ = [
    "MAX_IMAGE_PIXELS_ENV",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageTooLarge",
    "max_image_pixels",
    "RecordError",
    "Record",
    "SkipPolicy",
    "read_json",
    "iter_jsonl",
    "json_record",
    "json_list_records",
    "jsonl_records",
    "parquet_records",
    "dataset_records",
    "find_split_files",
    "table_records",
    "check_image",
    "open_image",
    "compose_canvas",
    "canvas_size",
    "image_size",
    "letter_index",
    "extract_zip_once",
    "resolve_root",
]

logger = logging.getLogger(__name__)

ImageLike = Path | Image.Image
T = TypeVar("T")
R = TypeVar("R")
_LETTER = re.compile(r"^\(?([A-Za-z])\)?$")


MAX_IMAGE_PIXELS_ENV = "TRACE_FORGE_MAX_IMAGE_PIXELS"
DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # PIL's MAX_IMAGE_PIXELS: the size at which PIL itself starts to warn

# Our own check (ImageTooLarge, one line naming the file) refuses an image over the limit; PIL's warning about the
# same image would add a second, two-line message. Past twice the limit PIL raises, which is turned into the same
# ImageTooLarge.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def max_image_pixels() -> int | None:
    """The largest image (width x height) a benchmark may hold: ``$TRACE_FORGE_MAX_IMAGE_PIXELS``, else
    :data:`DEFAULT_MAX_IMAGE_PIXELS`; None (no limit) when it is 0. Also applied to PIL, for images opened elsewhere.

    Raises:
        ConfigError: the variable is not a whole number >= 0.
    """
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    try:
        limit = int(value) if value else DEFAULT_MAX_IMAGE_PIXELS
    except ValueError:
        limit = -1
    if limit < 0:
        raise ConfigError(f"{MAX_IMAGE_PIXELS_ENV}={value!r}: need a whole number of pixels (0: no limit)")
    Image.MAX_IMAGE_PIXELS = limit or None
    return limit or None


class ImageTooLarge(DataError):
    """An image over :func:`max_image_pixels`: a likely decompression bomb, or a genuine image to allow."""

    def __init__(self, detail: str, *, path: object | None = None) -> None:
        super().__init__(f"{detail}: refused as a likely decompression bomb; if the image is genuine, allow it with "
                         f"{MAX_IMAGE_PIXELS_ENV}=<pixels> (0: no limit)", path=path)


def _check_pixels(size: tuple[int, int], limit: int | None, name: object) -> None:
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageTooLarge(f"image of {width} x {height} = {width * height:,} pixels is over the limit of "
                            f"{limit:,}", path=name)


def _bomb(error: Exception, limit: int | None, name: object) -> ImageTooLarge:
    """PIL's own refusal (past twice the limit), said as ours: PIL's message names its own, doubled limit."""
    found = re.search(r"\((\d+) pixels\)", str(error))
    size = f"image of {int(found.group(1)):,} pixels" if found else "image"
    return ImageTooLarge(f"{size} is over the limit of {limit or 0:,}", path=name)


class RecordError(DataError):
    """A bad record: one that ``skip_bad`` may skip. ``reason`` is the short key it is counted under."""

    def __init__(self, message: str, *, reason: str, path: object | None = None, line: int | None = None) -> None:
        super().__init__(message, path=path, line=line)
        self.reason = reason


@dataclass(frozen=True)
class Record:
    """One record of a benchmark file, with accessors that fail naming the file and the record.

    Attributes:
        path: the file it was read from.
        index: 1-based line number for JSONL, 0-based position for JSON lists and table rows.
        data: the record's fields.
        unit: how ``index`` counts: ``"line"``, ``"record"`` (JSON list), ``"row"`` (table), or ``"file"`` (the
            file is the record, as in V*Bench; ``index`` is 0).
    """

    path: Path
    index: int
    data: dict[str, Any]
    unit: str = "record"

    @property
    def source(self) -> str:
        """``file:line`` for JSONL, ``file#index`` for lists and tables, ``file`` alone; the Sample's source."""
        if self.unit == "file":
            return str(self.path)
        return f"{self.path}:{self.index}" if self.unit == "line" else f"{self.path}#{self.index}"

    def error(self, message: str, reason: str) -> RecordError:
        if self.unit == "line":
            return RecordError(message, reason=reason, path=self.path, line=self.index)
        if self.unit == "file":
            return RecordError(message, reason=reason, path=self.path)
        return RecordError(f"{self.unit} {self.index}: {message}", reason=reason, path=self.path)

    def require(self, field: str) -> Any:
        """The value of ``field``; a missing field or a null value is an error."""
        value = self.data.get(field)
        if value is None:
            raise self.error(f"missing required field {field!r}", f"missing field {field!r}")
        return value

    def text(self, field: str) -> str:
        """A required non-empty string field."""
        value = self.require(field)
        if not isinstance(value, str) or not value.strip():
            raise self.error(f"field {field!r} must be a non-empty string, got {value!r}", f"bad field {field!r}")
        return value

    def strings(self, field: str, min_len: int = 1) -> list[str]:
        """A required list of at least ``min_len`` strings (e.g. answer choices)."""
        value = self.require(field)
        if not isinstance(value, list | tuple) or len(value) < min_len or not all(isinstance(v, str) for v in value):
            raise self.error(
                f"field {field!r} must be a list of at least {min_len} strings, got {value!r}", f"bad field {field!r}"
            )
        return list(value)

    def box(self, value: Any, fmt: str, field: str = "bbox", scale: tuple[float, float] = (1.0, 1.0)) -> Box:
        """A pixel-frame box from ``[x, y, w, h]`` (``fmt="xywh"``) or ``[x1, y1, x2, y2]`` (``"xyxy"``).

        ``scale`` multiplies x and y coordinates (ScreenSpot-Pro boxes annotated on a different image size).
        """
        if not isinstance(value, list | tuple) or len(value) != 4 or not all(_is_number(v) for v in value):
            raise self.error(f"field {field!r} must be 4 numbers, got {value!r}", f"bad field {field!r}")
        a, b, c, d = (float(v) for v in value)
        sx, sy = scale
        try:
            box = Box.from_xywh(a, b, c, d) if fmt == "xywh" else Box(a, b, c, d)
            return Box(box.x1 * sx, box.y1 * sy, box.x2 * sx, box.y2 * sy)
        except ValueError as e:
            raise self.error(f"field {field!r} ({fmt}) {value!r}: {e}", f"bad field {field!r}") from None

    def image(self, value: Any, base_dir: Path) -> ImageLike:
        """An image cell checked for readability: a path (relative to ``base_dir``), a PIL image, or a
        ``{"bytes": ..., "path": ...}`` cell of an undecoded parquet image column."""
        try:
            if isinstance(value, Image.Image):
                _check_pixels(value.size, max_image_pixels(), getattr(value, "filename", "") or "<image>")
                return value
            if isinstance(value, dict) and value.get("bytes"):
                return _image_from_bytes(value["bytes"], value.get("path") or "<bytes>")
            if isinstance(value, dict) and value.get("path"):
                value = value["path"]
            if isinstance(value, str | Path) and str(value):
                path = base_dir / value
                check_image(path)
                return path
        except ImageTooLarge as e:
            raise self.error(str(e), "image over the pixel limit") from None
        except DataError as e:
            reason = "missing image" if isinstance(e.__cause__, FileNotFoundError) else "corrupt image"
            raise self.error(str(e), reason) from None
        raise self.error(f"not an image path or image: {value!r}", "bad image field")


class SkipPolicy:
    """What to do with a :class:`RecordError`: raise it, or (``skip_bad``) count it in ``counts`` and log it.

    Example:
        >>> counts = Counter()
        >>> policy = SkipPolicy(skip_bad=True, counts=counts)
        >>> policy(RecordError("no question", reason="missing field 'question'"))
        >>> counts
        Counter({"missing field 'question'": 1})
    """

    def __init__(self, skip_bad: bool, counts: Counter[str]) -> None:
        self.skip_bad = skip_bad
        self.counts = counts

    def __call__(self, error: RecordError) -> None:
        if not self.skip_bad:
            raise error
        self.counts[error.reason] += 1
        logger.warning("skipped bad record: %s", error)

    def convert(self, items: Iterable[T], fn: Callable[[T], R]) -> Iterator[R]:
        """``fn(item)`` for every item (a record, or a file that is one), routing record errors through this policy."""
        for item in items:
            try:
                yield fn(item)
            except RecordError as e:
                self(e)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing or malformed file raises :class:`DataError` with the line of the fault."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=path) from e
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(_not_utf8(data, e), path=path, line=data.count(b"\n", 0, e.start) + 1) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", path=path, line=e.lineno) from e


def iter_jsonl(path: str | Path, on_error: Callable[[RecordError], None] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_no, object)`` for each line of a JSONL file (line numbers start at 1).

    A line that is empty, not valid JSON (e.g. torn by an interrupted write) or not a JSON object is a
    :class:`RecordError` naming ``file:line``; it is raised, or passed to ``on_error`` and skipped.
    """
    path = Path(path)
    try:
        f = path.open("rb")
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", path=path) from e
    with f:
        for line_no, raw in enumerate(f, start=1):
            try:
                yield line_no, _jsonl_object(raw, path, line_no)
            except RecordError as error:
                if on_error is None:
                    raise
                on_error(error)


def _jsonl_object(raw: bytes, path: Path, line_no: int) -> dict:
    """The object on one JSONL line, or a :class:`RecordError` saying why there is none."""

    def error(message: str, reason: str) -> RecordError:
        return RecordError(message, reason=reason, path=path, line=line_no)

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(_not_utf8(raw, e), "not UTF-8") from None
    if not line.strip():
        raise error("empty line", "empty line")
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise error(f"malformed JSON: {e.msg}", "malformed JSON") from None
    if not isinstance(obj, dict):
        raise error(f"expected a JSON object, got {type(obj).__name__}", "malformed JSON")
    return obj


def _not_utf8(data: bytes, error: UnicodeDecodeError) -> str:
    column = error.start - (data.rfind(b"\n", 0, error.start) + 1) + 1
    return (f"not UTF-8 text (byte 0x{data[error.start]:02x} at column {column}); re-encode the file as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8")


def jsonl_records(path: Path, on_error: Callable[[RecordError], None] | None = None) -> Iterator[Record]:
    for line_no, obj in iter_jsonl(path, on_error):
        yield Record(path, line_no, obj, "line")


def json_record(path: Path) -> Record:
    """A JSON file holding one object as a record; a malformed file is a :class:`RecordError` (skippable)."""
    try:
        data = read_json(path)
    except DataError as e:
        raise RecordError(str(e), reason="malformed JSON") from e
    if not isinstance(data, dict):
        raise RecordError(f"expected a JSON object, got {type(data).__name__}", reason="malformed JSON", path=path)
    return Record(path, 0, data, "file")


def json_list_records(path: Path, on_error: Callable[[RecordError], None] | None = None) -> Iterator[Record]:
    """The records of a JSON file holding a list of objects (ScreenSpot annotation files).

    A malformed file is a :class:`DataError`; an element that is not an object is a :class:`RecordError`,
    raised or passed to ``on_error``.
    """
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(f"expected a JSON list of records, got {type(data).__name__}", path=path)
    for i, obj in enumerate(data):
        if isinstance(obj, dict):
            yield Record(path, i, obj, "record")
            continue
        error = RecordError(f"record {i}: expected an object, got {type(obj).__name__}", reason="malformed JSON",
                            path=path)
        if on_error is None:
            raise error
        on_error(error)


def dataset_records(dataset: Iterable[dict[str, Any]], path: Path) -> Iterator[Record]:
    """Rows of a ``datasets`` dataset as records; a read failure mid-file is a :class:`DataError` on ``path``."""
    rows = iter(dataset)
    index = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Image.DecompressionBombError as e:  # an image cell decoded by `datasets`, past twice the limit
            raise _bomb(e, max_image_pixels(), f"{path}#{index}") from None
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
            raise DataError(f"cannot read row {index}: {e}", path=path) from e
        yield Record(path, index, row, "row")
        index += 1


def parquet_records(path: Path, required: Sequence[str] = ()) -> Iterator[Record]:
    """Rows of one parquet file, read with ``datasets`` (streaming: no cache files, images decoded lazily).

    Raises:
        DataError: the file is not readable parquet, or lacks one of the ``required`` columns.
    """
    import datasets  # ~2 s import: only when a parquet file is read

    try:
        stream = datasets.load_dataset("parquet", data_files=[str(path)], split="train", streaming=True)
        columns = stream.column_names or []
    except (OSError, ValueError) as e:
        raise DataError(f"not a readable parquet file: {e}", path=path) from e
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"missing column(s) {missing}; columns are {columns}", path=path)
    yield from dataset_records(stream, path)


def table_records(
    path: Path, required: Sequence[str] = (), on_error: Callable[[RecordError], None] | None = None
) -> Iterator[Record]:
    """Records of a ``.parquet``, ``.jsonl`` or ``.json`` (list) file, by suffix.

    ``required`` columns are checked up front for parquet (a schema); in JSON(L) each record is checked as read.
    """
    if path.suffix == ".parquet":
        return parquet_records(path, required)
    if path.suffix == ".jsonl":
        return jsonl_records(path, on_error)
    if path.suffix == ".json":
        return json_list_records(path, on_error)
    raise DataError("unsupported file type (expected .parquet, .jsonl or .json)", path=path)


def find_split_files(root: Path, split: str) -> list[Path]:
    """The files of ``split`` under ``root`` in the layouts the Hub uses.

    Looks for ``<split>.parquet``, ``<split>-*.parquet`` (sharded) and ``<split>.jsonl``, directly in ``root``
    or in ``root/data``; the first folder with a match wins.

    Raises:
        DataError: when no file matches.
    """
    patterns = (f"{split}.parquet", f"{split}-*.parquet", f"{split}.jsonl")
    for folder in (root, root / "data"):
        files = sorted({p for pattern in patterns for p in folder.glob(pattern)})
        if files:
            return files
    raise DataError(
        f"no files for split {split!r} (looked for {', '.join(patterns)} here and in data/)", path=root
    )


def _image_from_bytes(data: bytes, name: str) -> Image.Image:
    limit = max_image_pixels()
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise _bomb(e, limit, name) from None
    except (OSError, ValueError) as e:
        raise DataError(f"corrupt image: {image_error(e)}", path=name) from e
    _check_pixels(image.size, limit, name)
    return image


def check_image(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, reading only its header.

    Raises:
        ImageTooLarge: it is over :func:`max_image_pixels`.
        DataError: the file is missing or not a readable image (the cause is the underlying OSError).
    """
    limit = max_image_pixels()
    try:
        with Image.open(path) as image:
            size = image.size
    except FileNotFoundError as e:
        raise DataError("image not found", path=path) from e
    except Image.DecompressionBombError as e:
        raise _bomb(e, limit, path) from None
    except (OSError, ValueError) as e:
        raise DataError(f"corrupt image: {image_error(e)}", path=path) from e
    _check_pixels(size, limit, path)
    return size


def open_image(image: str | Path | Image.Image) -> Image.Image:
    """The image fully decoded, in RGB.

    Raises:
        ImageTooLarge: it is over :func:`max_image_pixels`.
        DataError: the file is missing, or its data is corrupt (detected here, at full decode).
    """
    name = image if not isinstance(image, Image.Image) else getattr(image, "filename", "") or "<image>"
    limit = max_image_pixels()
    try:
        if not isinstance(image, Image.Image):
            with Image.open(image) as f:
                _check_pixels(f.size, limit, name)
                return f.convert("RGB")
        _check_pixels(image.size, limit, name)
        return image.convert("RGB")
    except FileNotFoundError as e:
        raise DataError("image not found", path=name) from e
    except Image.DecompressionBombError as e:
        raise _bomb(e, limit, name) from None
    except (OSError, ValueError, SyntaxError) as e:  # PIL raises SyntaxError on some broken headers
        raise DataError(f"corrupt image: {image_error(e)}", path=name) from e


def image_size(image: Path | Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an image file (its header only) or an image."""
    return check_image(image) if isinstance(image, Path) else image.size


def _layout(sizes: Sequence[tuple[int, int]]) -> tuple[tuple[int, int], list[tuple[int, int]]]:
    """Side by side, top-aligned: the canvas size and each image's top-left offset."""
    offsets, x = [], 0
    for width, _ in sizes:
        offsets.append((x, 0))
        x += width
    return (x, max(height for _, height in sizes)), offsets


def canvas_size(images: Sequence[Path | Image.Image]) -> tuple[int, int]:
    """The size of :func:`compose_canvas`'s canvas, from the images' headers (nothing decoded).

    Example:
        >>> canvas_size([Image.new("RGB", (64, 48)), Image.new("RGB", (96, 54))])
        (160, 54)
    """
    return _layout([image_size(image) for image in images])[0]


def compose_canvas(images: Sequence[str | Path | Image.Image]) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Place images side by side, top-aligned on a white canvas, so a multi-image item has one pixel frame.

    ViGoRL concatenates the images of a multi-image item into one picture; every grounded point then names a
    position on that picture. A single image is returned unchanged (as RGB).

    Args:
        images: one or more images or image paths, in order (left to right).

    Returns:
        The canvas and the top-left ``(x, y)`` offset of each image on it.

    Example:
        >>> a, b = Image.new("RGB", (64, 48)), Image.new("RGB", (96, 54))
        >>> canvas, offsets = compose_canvas([a, b])
        >>> canvas.size, offsets
        ((160, 54), [(0, 0), (64, 0)])
    """
    if not images:
        raise ValueError("compose_canvas needs at least one image")
    decoded = [open_image(image) for image in images]
    if len(decoded) == 1:
        return decoded[0], [(0, 0)]
    size, offsets = _layout([image.size for image in decoded])
    canvas = Image.new("RGB", size, "white")
    for image, offset in zip(decoded, offsets, strict=True):
        canvas.paste(image, offset)
    return canvas, offsets


def letter_index(label: str) -> int | None:
    """Option index of a letter label ``"B"`` or ``"(B)"`` (0-based), or None if it is not one."""
    match = _LETTER.match(label.strip())
    return ord(match.group(1).upper()) - ord("A") if match else None


def extract_zip_once(archive: Path, folder: Path) -> Path:
    """Make sure ``folder`` exists, extracting ``archive`` next to it the first time (ScreenSpot-v2 images).

    Members already prefixed with ``folder``'s name are extracted into its parent, others into ``folder``.
    """
    if folder.is_dir():
        return folder
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            prefixed = bool(names) and all(n.startswith(f"{folder.name}/") for n in names)
            logger.info("extracting %s (%d files)", archive, len(names))
            zf.extractall(folder.parent if prefixed else folder)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"cannot extract image archive: {e}", path=archive) from e
    if not folder.is_dir():
        raise DataError(f"archive did not contain the folder {folder.name!r}", path=archive)
    return folder


def resolve_root(data_dir: str | Path | None, hub_id: str | None, allow_patterns: Sequence[str] | None = None) -> Path:
    """The folder to read a benchmark from: ``data_dir``, or a snapshot of the benchmark's Hub dataset.

    Raises:
        DataError: ``data_dir`` does not exist, or the Hub snapshot cannot be had (offline, no cache, no access);
            the message says to pass ``--data-dir``.
        ConfigError: no ``data_dir`` and the task has no Hub dataset.
    """
    if data_dir is not None:
        root = Path(data_dir)
        if not root.exists():
            raise DataError("data directory does not exist", path=root)
        return root
    if hub_id is None:
        raise ConfigError("this task has no Hub dataset; pass --data-dir (data_dir=...)")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, repo_type="dataset", allow_patterns=allow_patterns))
    except OSError as e:  # offline without a cached copy, network and HTTP errors are all OSErrors here
        raise DataError(
            f"cannot get the Hub dataset {hub_id!r} ({type(e).__name__}: {e}); download it and pass "
            "--data-dir (data_dir=...) pointing at the official layout"
        ) from e
