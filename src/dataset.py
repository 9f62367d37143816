"""Labelled captchas -> ``mindspore.dataset`` pipeline of ``(image, label)`` batches.

The captchas come from a dataset folder or are rendered on the fly. A dataset folder is
either ``<index>-<label>.<ext>`` files (what ``process_data.py`` renders: the label is the
part after the first ``-``), ``<label>.<ext>`` files (the commonest naming of public captcha sets), or images of any names plus a ``labels.tsv`` (``file<TAB>label``
per line, UTF-8: the format predict.py prints, so corrected predictions become labels; a folder
being labelled by hand lists only its labelled images, see :func:`read_labels_tsv`).
On the fly (``synthetic_images``), every sample is a pure function of the seed and its place
in the stream (see :class:`SyntheticSource`). Labels are checked against the
:class:`CaptchaSpec` and coded by it (class indices right-padded with the blank), the same way
on every platform, and images are normalised as the spec says.
"""
from __future__ import annotations

import io
import math
import os
import random
import stat
import struct
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from src.captcha_spec import CaptchaSpec
from src.render import Renderer, RenderStyle, check_fits, resolve_fonts, sample_label

# The "fixed" normalisation: the original's per-channel statistics of its training set (BGR).
MEAN = (0.9010, 0.9049, 0.9025)
STD = (0.1521, 0.1347, 0.1458)
# The "per_image" normalisation divides by at least this std (one grey level), so that an image of
# one colour becomes zeros instead of noise blown up.
PER_IMAGE_STD_FLOOR = 1.0 / 255.0
# The image formats read everywhere (datasets and prediction); a GIF is read from its first frame.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
_FORMAT_NAMES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP"}
LABELS_FILE = "labels.tsv"
# The first line the labeller (src/labelling.py) writes: with it, an image labels.tsv does not list is
# not labelled yet instead of an error.
LABELLING_HEADER = "# labelling: images not listed here are not labelled yet"
# "#unreadable<TAB>file": an image a person marked unreadable (to any other TSV reader, a comment).
UNREADABLE_MARK = "#unreadable"


def label_of_name(file_name: str) -> str:
    """The label a file name carries, unchecked: after the first ``-`` of ``<index>-<label>.<ext>``
    (what process_data.py writes), else the whole stem of ``<label>.<ext>`` (public captcha sets)."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    return stem.split("-", 1)[1] if "-" in stem else stem


def parse_label(file_name: str, spec: CaptchaSpec) -> str:
    """The label of ``<index>-<label>.<ext>`` or ``<label>.<ext>``; ValueError naming the file if invalid."""
    label = label_of_name(file_name)
    try:
        return spec.check_label(label, source=file_name)
    except ValueError as err:
        if "-" in os.path.basename(file_name):
            raise
        raise ValueError(f"{err}; the name is neither <label>.<ext> nor <index>-<label>.<ext>: rename the "
                         f"file, or list the folder's labels in {LABELS_FILE}") from None


def check_tsv_name(path: str) -> None:
    """ValueError naming ``path`` when its name cannot stand in a ``labels.tsv`` line: a tab or a line
    break (any that ``str.splitlines`` knows) would split the line, and the file is UTF-8."""
    if "\t" in path or len((path + ".").splitlines()) != 1:
        raise ValueError(f"{path!r}: a tab or line break in the name cannot be written to a {LABELS_FILE} line; "
                         f"rename it")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{path!r}: the name is not UTF-8, so no {LABELS_FILE} line can hold it; rename it") from None


def regular_file_problem(path: str, what: str = "an image file") -> Optional[str]:
    """Why ``path`` is not a regular file (None if it is), found without opening it: opening a FIFO blocks.

    A broken symbolic link is named with its missing target; a folder, FIFO, socket or device
    is said to be one, not ``what``.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            return f"{path}: a symbolic link to {os.readlink(path)}, which does not exist"
        return f"{path}: does not exist"
    except OSError as err:
        return f"{path}: cannot be read ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"))
    return f"{path}: {next((kind for test, kind in kinds if test(mode)), 'a device')}, not {what}"


def list_image_files(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Sorted paths of the files in ``folder`` whose extension (any case) is one of ``extensions``.

    Other files are not images and are left out. A missing folder, one with no such file, and a
    name with such an extension that is not a regular file (a broken symbolic link, a folder, a
    FIFO, ...) are ValueErrors: an image that cannot be read is never skipped silently.
    """
    if not os.path.exists(folder):
        raise ValueError(f"dataset folder {folder}: does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"dataset folder {folder}: is not a folder")
    names = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() not in extensions:
                continue
            # is_file() needs no system call for a plain file; only the others are looked at closely.
            problem = None if entry.is_file() else regular_file_problem(entry.path)
            if problem:
                raise ValueError(problem)
            names.append(entry.name)
    if not names:
        raise ValueError(f"dataset folder {folder}: holds no {'/'.join(extensions)} files")
    return [os.path.join(folder, n) for n in sorted(names)]


def _listed_name(folder: str, written: str) -> Optional[str]:
    """The name in ``folder`` of a file listed as ``written``, or None if there is no such entry.

    Leading ``/``-separated folders are dropped; backslashes separate folders only when the name
    with them is not in the folder (``a\\b.png`` may be a Linux file name or a Windows path).
    """
    name = written.rsplit("/", 1)[-1]
    for candidate in (name, name.rsplit("\\", 1)[-1]):
        if candidate and os.path.lexists(os.path.join(folder, candidate)):
            return candidate
    return None


class LabelsEntry(NamedTuple):
    """One image's line of ``labels.tsv``: its file name in the folder, its label (None: marked
    unreadable) and its line number (from 1)."""

    name: str
    label: Optional[str]
    number: int


class LabelsFile(NamedTuple):
    """A parsed ``labels.tsv``: its lines as written (line endings kept, UTF-8 BOM not), whether it
    started with a BOM, its entries by file name in file order, and whether it holds LABELLING_HEADER."""

    path: str
    lines: List[str]
    bom: bool
    entries: Dict[str, LabelsEntry]
    partial: bool


def listed_as(name: str) -> str:
    """How a file name of the folder is written in ``labels.tsv``: ``./#0.png`` for ``#0.png`` (a comment else)."""
    return f"./{name}" if name.startswith("#") else name


def parse_labels_text(folder: str, path: str, text: str, spec: CaptchaSpec,
                      missing: Optional[List[str]] = None) -> LabelsFile:
    """Parse the text of ``path``, the ``labels.tsv`` of ``folder`` (see :func:`read_labels_tsv`); every
    problem is a ValueError naming ``path`` and the line. Whether every image is listed is not checked.

    With a ``missing`` list, a line naming a file the folder no longer holds is no error: the line
    is kept (it is no entry) and its one-line description appended to ``missing``.
    """
    bom = text.startswith("\ufeff")
    lines = (text[1:] if bom else text).splitlines(keepends=True)
    entries: Dict[str, LabelsEntry] = {}
    partial = False
    for number, raw in enumerate(lines, 1):
        line = raw.splitlines()[0]
        partial = partial or line == LABELLING_HEADER
        if line.startswith(UNREADABLE_MARK + "\t"):
            fields = line.split("\t")
            if len(fields) != 2:
                raise ValueError(f"{path}:{number}: expected {UNREADABLE_MARK}<TAB>file, got {len(fields)} field(s): "
                                 f"{line[:80]!r}")
            written, label = fields[1], None
        elif not line.strip() or line.startswith("#"):
            continue
        else:
            fields = line.split("\t")
            if len(fields) not in (2, 3):
                raise ValueError(f"{path}:{number}: expected file<TAB>label, got {len(fields)} field(s): "
                                 f"{line[:80]!r}")
            written, label = fields[0], fields[1]
        name = _listed_name(folder, written)
        if name is None:
            problem = f"{path}:{number}: {written} does not exist in {folder}"
            if missing is None:
                raise ValueError(problem)
            missing.append(problem)
            continue
        first = entries.get(name)
        if first is not None:
            if (first.label is None) == (label is None):
                raise ValueError(f"{path}:{number}: {name} is listed twice (first on line {first.number})")
            here, there = ("marked unreadable", "labelled") if label is None else ("labelled", "marked unreadable")
            raise ValueError(f"{path}:{number}: {name} is {here} here and {there} on line {first.number}; "
                             "keep one of the two lines")
        problem = regular_file_problem(os.path.join(folder, name))
        if problem:
            raise ValueError(f"{path}:{number}: {problem}")
        if label is not None:
            spec.check_label(label, source=f"{path}:{number}")
        entries[name] = LabelsEntry(name, label, number)
    return LabelsFile(path, lines, bom, entries, partial)


def read_labels_file(folder: str, spec: CaptchaSpec, missing: Optional[List[str]] = None) -> LabelsFile:
    """Read and parse ``<folder>/labels.tsv`` (:func:`parse_labels_text`, ``missing`` as there); ValueError
    if it is not a regular UTF-8 file or a line is wrong."""
    path = os.path.join(folder, LABELS_FILE)
    problem = regular_file_problem(path, "a file of labels")
    if problem:
        raise ValueError(f"{problem}; move it away to label the images by their file names")
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    return parse_labels_text(folder, path, text, spec, missing)


# The left-out lines already printed: eval.py lists its folder twice, and says so once.
_REPORTED: Set[str] = set()


def read_labels_tsv(folder: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` for every labelled image of ``<folder>/labels.tsv``.

    A line is ``file<TAB>label`` (a third column, predict.py's confidence, is ignored). ``file``
    names an image in the folder; leading folders are dropped, so predict.py's output can be
    used as it is, also with Windows paths (a backslash separates folders unless the name with
    it is in the folder). Empty lines and lines starting with ``#`` are comments, so an image
    whose name starts with ``#`` is listed as ``./#0.png``; but ``#unreadable<TAB>file`` marks an
    image a person could not read, which is left out. A listed or unlisted image that is not a
    regular file (a broken symbolic link, a folder, ...) is an error. Every image of the folder
    must be listed, unless the file holds LABELLING_HEADER (it is being labelled, see
    src/labelling.py): then the images it does not list are not labelled yet and left out. What
    is left out is said in one line on stderr.
    """
    labels = read_labels_file(folder, spec)
    path = labels.path
    if not labels.entries and not labels.partial:
        raise ValueError(f"{path}: lists no images")
    unlisted = [os.path.basename(p) for p in list_image_files(folder) if os.path.basename(p) not in labels.entries]
    if unlisted and not labels.partial:
        example = next((n for n in unlisted if n.startswith("#")), unlisted[0])
        hint = (f"; a line starting with '#' is a comment: list it as ./{example}" if example.startswith("#")
                else "; list every image or move it out")
        raise ValueError(f"{path}: {len(unlisted)} image(s) of the folder are not listed (e.g. {example}){hint}")
    samples = [(os.path.join(folder, e.name), e.label) for e in labels.entries.values() if e.label is not None]
    unreadable = len(labels.entries) - len(samples)
    left_out = " and ".join(part for count, part in ((len(unlisted), f"{len(unlisted)} not labelled yet"),
                                                     (unreadable, f"{unreadable} marked unreadable")) if count)
    if not samples:
        raise ValueError(f"{path}: lists no labelled images ({left_out}); label some first")
    if left_out:
        line = f"dataset: {path}: {len(samples)} labelled images; leaving out {left_out}"
        if line not in _REPORTED:
            _REPORTED.add(line)
            print(line, file=sys.stderr, flush=True)
    return samples


def list_samples(dataset_path: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` of every labelled image of a dataset folder (from ``labels.tsv`` or the file names)."""
    if os.path.lexists(os.path.join(dataset_path, LABELS_FILE)):
        return read_labels_tsv(dataset_path, spec)
    return [(path, parse_label(path, spec)) for path in list_image_files(dataset_path)]


def _raw_labels(folder: str) -> List[Tuple[str, str]]:
    """``(path, label)`` of a folder's labelled images, its labels.tsv or file names read as text, before any
    alphabet is known (:func:`list_samples` checks them once the alphabet is chosen)."""
    if not os.path.lexists(os.path.join(folder, LABELS_FILE)):
        return [(path, label_of_name(path)) for path in list_image_files(folder)]
    try:
        with open(os.path.join(folder, LABELS_FILE), encoding="utf-8-sig") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError):
        return []           # read_labels_tsv names the problem
    fields = [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]
    return [(os.path.join(folder, f[0]), f[1]) for f in fields if len(f) >= 2]


def _image_size(path: str) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from an image's header, or None when it cannot be read (check_images names it)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


# A fine-tuned network reads images at most this many times as wide as its base's (CTC steps and memory grow
# with the width).
MAX_WIDTH_GROWTH = 4


def fit_spec_to_folder(folder: str, base: CaptchaSpec, given: Sequence[str]) -> Tuple[Dict[str, object], str]:
    """The spec fields a fine-tuning on ``folder`` should use, worked out from its labels and image sizes, and
    one line saying what was chosen.

    Of the fields the user did not set (``given``, by Config name): the alphabet is the labels' characters
    (in the base's order, new ones after it), the length the longest label's; with a ``keep_aspect`` base
    the width grows (up to MAX_WIDTH_GROWTH x the base's, in steps of 8) so that the widest image's aspect
    fits unshrunk. The height is always the base's, which the network's weights are made for.
    """
    samples = _raw_labels(folder)
    labels = [label for _, label in samples if label]
    if not labels:
        return {}, ""
    values: Dict[str, object] = {}
    notes = []
    used = {c for label in labels for c in label if c.isprintable() and not c.isspace()}
    if "charset" not in given and used:
        charset = "".join(c for c in base.charset if c in used) + "".join(sorted(used - set(base.charset)))
        values["charset"] = charset
        notes.append(f"alphabet {charset!r} ({len(charset)} characters, those of its labels)")
    if "max_captcha_digits" not in given:
        values["max_captcha_digits"] = max(len(label) for label in labels)
        notes.append(f"1-{values['max_captcha_digits']} characters (its longest label)")
    sizes = [size for size in (_image_size(path) for path, _ in samples) if size and min(size) > 0]
    if sizes:
        (low_w, low_h), (high_w, high_h) = min(sizes), max(sizes)
        shown = f"{low_w}x{low_h}" if min(sizes) == max(sizes) else f"{low_w}x{low_h} to {high_w}x{high_h}"
        width = base.width
        if base.resize == "keep_aspect" and "captcha_width" not in given:
            aspect = max(w / h for w, h in sizes)
            needed = math.ceil(base.input_height * aspect / 8) * 8
            width = min(max(base.width, needed), MAX_WIDTH_GROWTH * base.width)
            values["captcha_width"] = width
        elif "captcha_width" in given:
            width = None
        how = "fitted with the aspect kept" if base.resize == "keep_aspect" else "stretched"
        notes.append(f"images {shown}, {how} into " + (f"{width}x{base.input_height}" if width else "--captcha_width"))
    override = "--charset, --max_captcha_digits and --captcha_width override"
    return values, f"fine-tuning to {folder}: " + "; ".join(notes) + f" ({override})"


def _unreadable(path: str, err: Exception) -> str:
    kind = _FORMAT_NAMES.get(os.path.splitext(path)[1].lower())
    detail = " ".join(str(err).split())   # one line, whatever the decoder wrote
    return f"{path}: not a readable {kind + ' ' if kind else ''}image ({type(err).__name__}: {detail})"


# Adam7 interlacing: (first column, first row, column step, row step) of each of the 7 passes.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _check_png_data(data: bytes) -> None:
    """OSError if the zlib stream of a PNG ends before its last pixel row: Pillow reads such a
    file without a word, the missing rows black."""
    header, stream, size, pos = None, zlib.decompressobj(), 0, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data[pos + 8:pos + 21])
        elif kind == b"IDAT":
            size += len(stream.decompress(data[pos + 8:pos + 8 + length]))
        elif kind == b"IEND":
            break
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = header
    bits = depth * _PNG_CHANNELS[colour]
    expected = 0
    for x0, y0, dx, dy in _ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            expected += rows * (1 + (columns * bits + 7) // 8)
    if size < expected:
        raise OSError(f"its image data stops after {size} of {expected} bytes")


def _to_8_bit_grey(image: Image.Image) -> Image.Image:
    """A 16-bit, 32-bit integer or float grey image as 8-bit grey, by scaling.

    Pillow's own conversion clips at 255, so a 16-bit image would read white. 16-bit values
    (and 32-bit ones in 0-65535: Pillow's mode for some 16-bit files) are divided by 257 and
    rounded; floats are read as 0-1 when none is above 1, else as 0-255. Other values are
    refused.
    """
    values = np.asarray(image)
    if image.mode == "F":
        low, high = float(values.min()), float(values.max())
        if not (np.isfinite(values).all() and low >= 0 and high <= 255):
            raise ValueError(f"float pixel values from {low} to {high}: only 0-1 and 0-255 are read")
        grey = np.rint(values * (255.0 if high <= 1 else 1.0))
    else:
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > 65535:
            raise ValueError(f"32-bit pixel values from {low} to {high}: only 16-bit ones (0-65535) are read")
        grey = (values.astype(np.uint32) + 128) // 257
    return Image.fromarray(grey.astype(np.uint8), "L")


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return _to_8_bit_grey(image).convert("RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in image.info:
        # Dropping the alpha would show the colour under transparent pixels, often black.
        rgba = (image.convert("LA") if image.mode == "La" else image).convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def decode_bgr(data: bytes, name: str) -> np.ndarray:
    """Decode the bytes of an image file (of an animation, the first frame) as uint8 HWC in BGR
    order; ValueError naming ``name`` if they are not a readable image.

    The EXIF orientation is applied, as image viewers do. Grayscale, palette, CMYK and other
    8-bit modes are converted to RGB; 16-bit and float pixels are scaled to 8 bits
    (:func:`_to_8_bit_grey`); a transparent image is laid on white. A PNG whose image data
    stops short is refused.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            ImageOps.exif_transpose(image, in_place=True)
            if image.format == "PNG":
                _check_png_data(data)
            rgb = np.asarray(_to_rgb(image))
    except UnidentifiedImageError:
        # Pillow's text names the in-memory file object, not the file.
        raise ValueError(_unreadable(name, UnidentifiedImageError(f"cannot identify image file {name!r}"))) from None
    except Exception as err:  # PIL raises many types; each means "not a readable image"
        raise ValueError(_unreadable(name, err)) from None
    # The original swapped to BGR; kept so its normalisation statistics and checkpoints apply.
    return np.ascontiguousarray(rgb[:, :, ::-1])


def load_bgr(path: str) -> np.ndarray:
    """Read an image file as :func:`decode_bgr` decodes one; ValueError naming the file if unreadable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as err:
        raise ValueError(_unreadable(path, err)) from None
    return decode_bgr(data, path)


def _read_checked(path: str, max_pixels: int = 0) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """``(image, None)`` for a readable image file, ``(None, why)`` for another: it is decoded whole,
    and a PNG's CRCs checked. With ``max_pixels``, an image of more pixels is refused from its
    header, before it costs the memory and time of decoding."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
        if max_pixels:
            try:
                with Image.open(io.BytesIO(data)) as header:
                    width, height = header.size
            except Exception:  # noqa: BLE001 -- decode_bgr below says why it is not an image
                width = height = 0
            if width * height > max_pixels:
                return None, (f"{path}: {width}x{height} is {width * height:,} pixels, over --max_pixels "
                              f"{max_pixels:,}")
        image = decode_bgr(data, path)  # the whole image, as the pipeline will read it
    except ValueError as err:
        return None, str(err)
    except OSError as err:
        return None, _unreadable(path, err)
    if data.startswith(_PNG_SIGNATURE):
        try:
            with Image.open(io.BytesIO(data)) as png:
                png.verify()  # every chunk's CRC, which decoding does not check
        except Exception as err:  # PIL raises many types; each means "not a readable image"
            return None, _unreadable(path, err)
    return image, None


# A training folder whose decoded images take at most this many bytes is kept in memory: its epochs
# decode nothing (1,000 captchas of 160x64 are 31 MB). A bigger one is read image by image.
MAX_KEPT_BYTES = 256 * 1024 * 1024


def check_images(paths: Sequence[str], workers: int = 4, keep_bytes: int = 0,
                 max_pixels: int = 0) -> Optional[List[np.ndarray]]:
    """Raise ValueError naming the first unreadable image, or one over ``max_pixels`` if given (all
    files are checked, in parallel).

    With ``keep_bytes``, also return the decoded images (BGR, as :func:`load_bgr` reads them) when
    together they take at most that many bytes; None when they take more, or without it.
    """
    kept: Optional[List[np.ndarray]] = [] if keep_bytes > 0 else None
    size = 0
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for image, problem in pool.map(lambda path: _read_checked(path, max_pixels), paths, chunksize=256):
            if problem:
                raise ValueError(problem)
            if kept is not None:
                size += image.nbytes
                if size > keep_bytes:
                    kept = None         # too big to keep: the rest is only checked
                else:
                    kept.append(image)
    return kept


def pipeline_error(err: RuntimeError) -> ValueError:
    """The one-line ValueError that a source raised inside the MindSpore pipeline, which reports it
    wrapped in a long RuntimeError (two call stacks around it); ``err`` itself when it holds none.

    For a file that turns bad after the up-front check (changed on disk meanwhile).
    """
    ours = [line[len("ValueError: "):] for line in str(err).splitlines()
            if line.startswith("ValueError: ") and not line.startswith("ValueError: Traceback")]
    if not ours:
        raise err
    return ValueError(ours[-1])


class CaptchaSource:
    """Random-access source for ``GeneratorDataset``: index -> (BGR uint8 image, coded label).

    ``images`` (the decoded images of ``samples``, e.g. from :func:`check_images`) are served from
    memory; without them every read decodes the file.
    """

    def __init__(self, samples: Sequence[Tuple[str, str]], spec: CaptchaSpec,
                 images: Optional[Sequence[np.ndarray]] = None):
        self.samples = list(samples)
        self.labels = [spec.encode(label, source=path) for path, label in self.samples]
        self.images = None if images is None else list(images)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        if self.images is not None:
            # A copy: what the pipeline receives is its own, whatever it does with it.
            return self.images[index].copy(), self.labels[index]
        return load_bgr(self.samples[index][0]), self.labels[index]


class SyntheticSource:
    """Random-access source of captchas rendered on the fly: global sample index -> (BGR image, coded label).

    Sample ``g`` is a pure function of ``(seed, g)``: its label is drawn from
    ``random.Random("warpctc-synthetic-label-<seed>-<g>")`` and its image rendered by ``renderer``
    from the seed ``"warpctc-synthetic-image-<seed>-<g>"``, so any sample can be made again, in
    any order, by any worker. ``count`` is the number of samples an epoch reads (per shard).
    """

    def __init__(self, renderer: Renderer, seed: int, count: int):
        self.renderer = renderer
        self.seed = seed
        self.count = count

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> Tuple[str, str]:
        """``(label, image seed)`` of global sample ``index``."""
        label = sample_label(random.Random(f"warpctc-synthetic-label-{self.seed}-{index}"), self.renderer.spec)
        return label, f"warpctc-synthetic-image-{self.seed}-{index}"

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        label, image_seed = self.sample(int(index))
        return self.renderer.render_bgr(label, image_seed), self.renderer.spec.encode(label)


class MixedSource:
    """Random-access source of a labelled folder mixed with the on-the-fly stream.

    Indices are coded by :class:`MixedSampler`: an odd index ``2g + 1`` is sample ``g`` of the
    stream; an even index ``2d`` is draw ``d`` of the folder, image ``d % len(folder)``. With
    ``augment`` (a :class:`Renderer` whose style has whole-image augmentations), each draw of a
    folder image is augmented from the seed ``"warpctc-folder-augment-<seed>-<d>"``, so an image
    looks different every epoch and the same in every run.
    """

    def __init__(self, folder: CaptchaSource, synthetic: Optional[SyntheticSource],
                 augment: Optional[Renderer], seed: int):
        self.folder = folder
        self.synthetic = synthetic
        self.augment = augment
        self.seed = seed

    def __len__(self) -> int:
        return len(self.folder) + (len(self.synthetic) if self.synthetic is not None else 0)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        index = int(index)
        if index % 2:
            return self.synthetic[index // 2]
        draw = index // 2
        image, label = self.folder[draw % len(self.folder)]
        if self.augment is not None:
            rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
            border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
            fill = tuple(int(v) for v in np.median(border, axis=0)[::-1])
            rng = random.Random(f"warpctc-folder-augment-{self.seed}-{draw}")
            image = np.ascontiguousarray(np.asarray(self.augment.augment(rgb, rng, fill))[:, :, ::-1])
        return image, label


class MixedSampler:
    """The indices one shard reads per epoch from a :class:`MixedSource`: its share of the folder,
    freshly shuffled each epoch, plus new stream samples, in one shuffled order of whole batches.

    Epoch ``e`` shuffles the folder with ``random.Random("warpctc-mix-<seed>-<e>")``; shard ``s``
    of ``N`` takes every N-th image of that order from the ``s``-th (``len(folder) // N`` each),
    and stream positions as :class:`StreamSampler` does. The stream fills the folder's share to
    whole batches of ``batch_size``: of ``synthetic`` samples per epoch, the remainder is left out
    (1,000 images and 250 at batch 64: 216 per epoch, 19 batches), so that every image of the
    share is read once per epoch and no sample is drawn only to be dropped with a last partial
    batch. With fewer stream samples than that remainder, the shuffled order is cut to whole
    batches instead. Like :class:`StreamSampler`, a copy starts at epoch 0 and each iteration is
    the next epoch, so a resumed run reads what an uninterrupted one would.
    """

    def __init__(self, folder_count: int, synthetic: int, seed: int, num_shards: int = 1, shard_id: int = 0,
                 batch_size: int = 1):
        self.folder_count = folder_count
        self.requested = synthetic
        self.seed = seed
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.batch_size = batch_size
        self.share = folder_count // num_shards
        remainder = (self.share + synthetic) % batch_size
        self.synthetic = synthetic - remainder if remainder <= synthetic else synthetic
        self.size = (self.share + self.synthetic) // batch_size * batch_size
        self.epoch = 0

    def __deepcopy__(self, memo) -> "MixedSampler":
        return MixedSampler(self.folder_count, self.requested, self.seed, self.num_shards, self.shard_id,
                            self.batch_size)

    def __len__(self) -> int:
        return self.size

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        rng = random.Random(f"warpctc-mix-{self.seed}-{epoch}")
        order = list(range(self.folder_count))
        rng.shuffle(order)
        mine = order[self.shard_id::self.num_shards][:self.share]
        codes = [2 * (epoch * self.folder_count + i) for i in mine]
        first = epoch * self.synthetic
        codes += [2 * (p * self.num_shards + self.shard_id) + 1 for p in range(first, first + self.synthetic)]
        rng.shuffle(codes)
        return iter(codes[:self.size])


class StreamSampler:
    """The global sample indices one shard reads, epoch after epoch: a stream that never repeats.

    Position ``p`` of shard ``shard_id``'s stream is global sample ``p * num_shards + shard_id``
    (shards are disjoint, and step ``t`` of N shards at batch B reads the samples one shard at
    batch N x B would); epoch ``e`` reads positions ``e * per_epoch`` to ``(e + 1) * per_epoch - 1``.
    MindSpore iterates a copy of the sampler once per epoch, also for the epochs that
    ``Dataset.set_init_step`` skips (without fetching their samples), so a resumed run reads
    exactly the positions an uninterrupted one would. Every copy starts at epoch 0: MindSpore
    also copies and iterates samplers to count a dataset (``get_dataset_size``), which must not
    move the stream.
    """

    def __init__(self, per_epoch: int, num_shards: int = 1, shard_id: int = 0):
        self.per_epoch = per_epoch
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.epoch = 0

    def __deepcopy__(self, memo) -> "StreamSampler":
        return StreamSampler(self.per_epoch, self.num_shards, self.shard_id)

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self):
        first = self.epoch * self.per_epoch
        self.epoch += 1
        return iter(range(first * self.num_shards + self.shard_id,
                          (first + self.per_epoch) * self.num_shards + self.shard_id, self.num_shards))


class PerImageStandardize:
    """The "per_image" normalisation: each channel of a float HWC image to mean 0 and std 1 over its
    pixels (population std, at least PER_IMAGE_STD_FLOOR)."""

    def __call__(self, image: np.ndarray) -> np.ndarray:
        # float64 statistics: a float32 sum over 10,000 pixels is off by ~1e-4. Each channel as one
        # contiguous row: numpy's mean/std over axes (0, 1) of an HWC image step 3 values at a time and
        # took 0.6 ms per captcha, a sixth of a training step's pipeline work; this takes 0.1 ms and gives
        # the same float32 values (tests/test_adapt_pipeline.py).
        channels = image.reshape(-1, image.shape[-1]).T.astype(np.float64, order="C")
        channels -= channels.mean(axis=1, keepdims=True)
        channels /= np.maximum(np.sqrt(np.square(channels).mean(axis=1, keepdims=True)), PER_IMAGE_STD_FLOOR)
        return channels.T.astype(np.float32, order="C").reshape(image.shape)


class KeepAspectFit:
    """The "keep_aspect" resize: a float HWC image scaled (bilinear) to fit inside ``height`` x ``width`` with
    its aspect ratio kept, centred vertically and left-aligned; the rest is filled with the per-channel
    mean of the scaled image's border pixels, so the fill continues the captcha's background."""

    def __init__(self, height: int, width: int, resize: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None):
        """``resize(image, height, width)`` scales a float HWC image (default: MindSpore's bilinear Resize;
        src.onnx_reader passes its numpy twin)."""
        self.height = height
        self.width = width
        self.resize = resize

    def placement(self, image_height: int, image_width: int) -> Tuple[int, int, int]:
        """``(scaled height, scaled width, top row)`` of an image of that size."""
        scale = min(self.height / image_height, self.width / image_width)
        high = min(self.height, max(1, round(image_height * scale)))
        wide = min(self.width, max(1, round(image_width * scale)))
        return high, wide, (self.height - high) // 2

    def __call__(self, image: np.ndarray) -> np.ndarray:
        high, wide, top = self.placement(*image.shape[:2])
        if (high, wide) != image.shape[:2]:
            if self.resize is None:
                import mindspore.dataset.vision as vision

                image = vision.Resize((high, wide))(image)
            else:
                image = self.resize(image, high, wide)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
        out = np.empty((self.height, self.width, image.shape[2]), np.float32)
        out[...] = border.mean(axis=0, dtype=np.float64).astype(np.float32)
        out[top:top + high, :wide] = image
        return out


def image_transforms(spec: CaptchaSpec) -> list:
    """The per-image transforms: rescale, normalise (as ``spec.normalization`` says), resize to the
    network's input (as ``spec.resize`` says), HWC->CHW. With "fixed" and "stretch", the original's."""
    import mindspore.dataset.vision as vision

    if spec.normalization == "per_image":
        normalize = PerImageStandardize()
    else:
        normalize = vision.Normalize(list(MEAN), list(STD))
    if spec.resize == "keep_aspect":
        resize = KeepAspectFit(spec.input_height, spec.width)
    else:
        resize = vision.Resize((spec.input_height, spec.width))
    return [
        vision.Rescale(1.0 / 255.0, 0.0),
        normalize,
        resize,
        vision.HWC2CHW(),
    ]


def _pipeline(source, column_names: List[str], spec: CaptchaSpec, batch_size: int, workers: int,
              drop_remainder: bool, **sampling):
    """``GeneratorDataset`` over ``source`` + the image transforms + batching (train, eval and predict)."""
    import mindspore.dataset as ds

    dataset = ds.GeneratorDataset(source, column_names=column_names, num_parallel_workers=workers,
                                  python_multiprocessing=False, **sampling)
    dataset = dataset.map(operations=image_transforms(spec), input_columns="image", num_parallel_workers=workers)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def describe_synthetic(cfg, spec: CaptchaSpec) -> str:
    """One line on the on-the-fly stream, e.g. ``on the fly: 50000 captchas per epoch, seed 1,
    1-4 of '0123456789', 160x64, default style``."""
    style = RenderStyle.from_config(cfg)
    line = (f"on the fly: {cfg.synthetic_images} captchas per epoch, seed {cfg.seed}, {spec.describe()}, "
            f"{style.describe()}")
    if "fonts" in style.changes():
        check_fits(style, spec)         # before any font is opened at a size it cannot take
        line += f" (fonts: {resolve_fonts(style, spec.charset)[1]})"
    return line


def create_dataset(dataset_path: Optional[str], cfg, spec: Optional[CaptchaSpec] = None, *, training: bool = True,
                   num_shards: int = 1, shard_id: int = 0, platform: str = "CPU"):
    """The batched ``(image float32 (B,3,H,W), label int32 (B,max_length))`` dataset of a folder, or,
    with ``dataset_path`` None, of ``cfg.synthetic_images`` captchas per epoch rendered on the fly;
    for training, a folder and ``cfg.synthetic_images > 0`` mix both (:class:`MixedSampler`), and
    ``cfg.augment_folder`` augments the folder's images with the style's whole-image augmentations.

    ``cfg`` (a :class:`src.config.Config`) gives the batch size, seed and worker count (and the
    render style); ``spec`` (default: the config's) what the captchas are. For a folder,
    ``training`` shuffles with the seed and drops the last partial batch; otherwise every image is
    kept, in order. Every file is validated up front (label and image data) so a bad file fails
    here, naming it, not deep inside the pipeline; for training, the decoded images are kept in
    memory when they fit in MAX_KEPT_BYTES, so epochs decode nothing. With several shards each gets
    ``ceil(N / num_shards)`` samples (MindSpore's distributed sampler repeats at most
    ``num_shards - 1`` so all ranks run the same steps). On the fly, every epoch reads new
    samples (:class:`StreamSampler`): each shard ``synthetic_images // num_shards`` of them, in
    whole batches when training.
    """
    import mindspore.dataset as ds

    from src.config import num_workers

    spec = spec or CaptchaSpec.from_config(cfg)
    if num_shards <= 0 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards), got shard_id={shard_id}, num_shards={num_shards}")
    workers = num_workers(cfg, platform, training)
    if dataset_path is None:
        return _synthetic_dataset(cfg, spec, training, num_shards, shard_id, workers)
    samples = list_samples(dataset_path, spec)
    # A training run reads a small folder once per epoch: the check's decoded images are kept for it.
    images = check_images([path for path, _ in samples], workers=max(workers, 4),
                          keep_bytes=MAX_KEPT_BYTES if training else 0, max_pixels=cfg.max_pixels)
    source = CaptchaSource(samples, spec, images)
    per_shard = len(samples) // num_shards
    if training and cfg.synthetic_images:
        per_shard += cfg.synthetic_images // num_shards
    if training and per_shard < cfg.batch_size:
        raise ValueError(f"dataset folder {dataset_path}: {len(samples)} images give {per_shard} per shard "
                         f"({num_shards} shard(s)), fewer than one batch of {cfg.batch_size}")
    if training and (cfg.synthetic_images or cfg.augment_folder):
        renderer = Renderer(spec, RenderStyle.from_config(cfg))
        synthetic = SyntheticSource(renderer, cfg.seed, cfg.synthetic_images) if cfg.synthetic_images else None
        mixed = MixedSource(source, synthetic, renderer if cfg.augment_folder else None, cfg.seed)
        sampler = MixedSampler(len(samples), cfg.synthetic_images // num_shards, cfg.seed, num_shards, shard_id,
                               cfg.batch_size)
        return _pipeline(mixed, ["image", "label"], spec, cfg.batch_size, workers, drop_remainder=True,
                         sampler=sampler)
    ds.config.set_seed(cfg.seed)
    return _pipeline(source, ["image", "label"], spec, cfg.batch_size, workers, drop_remainder=training,
                     shuffle=training, num_shards=num_shards, shard_id=shard_id)


def _synthetic_dataset(cfg, spec: CaptchaSpec, training: bool, num_shards: int, shard_id: int, workers: int):
    if cfg.synthetic_images <= 0:
        raise ValueError("no dataset folder given and --synthetic_images is 0: give --dataset_path, or "
                         "--synthetic_images N to train on N captchas per epoch rendered on the fly")
    per_shard = cfg.synthetic_images // num_shards
    per_epoch = per_shard - per_shard % cfg.batch_size if training else per_shard
    if per_epoch <= 0:
        raise ValueError(f"--synthetic_images {cfg.synthetic_images} gives {per_shard} per shard ({num_shards} "
                         f"shard(s)), fewer than one batch of {cfg.batch_size}")
    source = SyntheticSource(Renderer(spec, RenderStyle.from_config(cfg)), cfg.seed, per_epoch)
    return _pipeline(source, ["image", "label"], spec, cfg.batch_size, workers, drop_remainder=training,
                     sampler=StreamSampler(per_epoch, num_shards, shard_id))


def load_batches(dataset_path: str, cfg, spec: CaptchaSpec, limit: int = 0, platform: str = "CPU") -> Tuple[list, int]:
    """The first ``limit`` images (0: all) of a folder as in-memory ``(image Tensor, label array)`` batches,
    for evaluating again and again during training; returns ``(batches, image count)``."""
    import mindspore as ms

    dataset = create_dataset(dataset_path, cfg, spec, training=False, platform=platform)
    batches, count = [], 0
    for image, label in dataset.create_tuple_iterator(output_numpy=True):
        if limit:
            image, label = image[:limit - count], label[:limit - count]
        batches.append((ms.Tensor(image), label))
        count += len(label)
        if limit and count >= limit:
            break
    return batches, count


class _ImageOnlySource:
    """index -> (BGR image, index): for images whose names carry no label."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return load_bgr(self.paths[index]), np.array(index, dtype=np.int32)


def create_predict_dataset(paths: Sequence[str], cfg, spec: CaptchaSpec):
    """Batches of ``(image, index into paths)`` in order, through exactly the training transforms."""
    from src.config import num_workers

    if not paths:
        raise ValueError("no images to predict")
    workers = num_workers(cfg)
    check_images(paths, workers=max(workers, 4), max_pixels=cfg.max_pixels)
    return _pipeline(_ImageOnlySource(paths), ["image", "index"], spec, cfg.batch_size, workers,
                     drop_remainder=False, shuffle=False)


class Progress:
    """``<label>: done/total images (N images/s)`` lines on stderr during a pass over images.

    A line every ``interval`` seconds and one at the end: a 10,000-image evaluation (~80 s on
    2 cores) shows about 15 lines, a run of a few seconds only the last; stdout is left to the
    results.
    """

    def __init__(self, label: str, total: int, quiet: bool = False, interval: float = 5.0):
        self.label = label
        self.total = total
        self.quiet = quiet
        self.interval = interval
        self.done = 0
        self._start = self._last = time.monotonic()

    def add(self, count: int) -> None:
        """Count ``count`` more images as done; print a line when one is due."""
        self.done += count
        now = time.monotonic()
        if self.quiet or (self.done < self.total and now - self._last < self.interval):
            return
        rate = self.done / max(now - self._start, 1e-9)
        print(f"{self.label}: {self.done}/{self.total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)
        self._last = now
