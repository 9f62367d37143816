"""Image files: which formats are read, how a file or an upload is checked and decoded to BGR, and the
folder listing every reader shares. Nothing here knows labels or the network."""
from __future__ import annotations

import io
import os
import stat
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


# The image formats read everywhere (datasets, prediction, the server): extension -> (Pillow's format name,
# media type). A GIF is read from its first frame.
IMAGE_FORMATS = {".png": ("PNG", "image/png"), ".jpg": ("JPEG", "image/jpeg"), ".jpeg": ("JPEG", "image/jpeg"),
                 ".gif": ("GIF", "image/gif"), ".bmp": ("BMP", "image/bmp")}
IMAGE_EXTENSIONS = tuple(IMAGE_FORMATS)
MEDIA_TYPES = {name: media for name, media in IMAGE_FORMATS.values()}     # by Pillow's format name


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


def image_size(path: str) -> Optional[Tuple[int, int]]:
    """``(width, height)`` from an image's header, or None when it cannot be read (check_images names it)."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _unreadable(path: str, err: Exception) -> str:
    kind = IMAGE_FORMATS.get(os.path.splitext(path)[1].lower(), (None,))[0]
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
