"""Captcha PNG folder -> ``mindspore.dataset`` pipeline of ``(image, label)`` batches.

Label coding, shared by the loss and the metric: a label of up to ``max_captcha_digits``
digits becomes an int32 vector of that length holding the digit values, right-padded with
:data:`BLANK` (10, the CTC blank class). Padding therefore can never be read as a digit.
"""
from __future__ import annotations

import math
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

NUM_DIGIT_CLASSES = 10
BLANK = NUM_DIGIT_CLASSES           # the CTC blank is the last class
NUM_CLASSES = NUM_DIGIT_CLASSES + 1
MEAN = (0.9010, 0.9049, 0.9025)
STD = (0.1521, 0.1347, 0.1458)
PLATFORMS = ("Ascend", "GPU", "CPU")
# What prediction reads from a folder; train/test sets are PNG only (their names carry the label).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp")
_FORMAT_NAMES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".gif": "GIF", ".bmp": "BMP"}

_LABEL_RE = re.compile(r"^[0-9]+$")


def parse_label(file_name: str, max_digits: int = 4) -> str:
    """The digits after the first ``-`` of ``<index>-<digits>.png``; ValueError if invalid."""
    base = os.path.basename(file_name)
    stem, ext = os.path.splitext(base)
    if ext.lower() != ".png" or "-" not in stem:
        raise ValueError(f"{file_name}: name is not <index>-<digits>.png")
    label = stem.split("-", 1)[1]
    if not _LABEL_RE.match(label) or not 1 <= len(label) <= max_digits:
        raise ValueError(f"{file_name}: label {label!r} is not 1 to {max_digits} digits")
    return label


def encode_label(digits: str, max_digits: int = 4) -> np.ndarray:
    """``"407"`` -> ``[4, 0, 7, BLANK]`` (int32, length ``max_digits``)."""
    if not _LABEL_RE.match(digits) or not 1 <= len(digits) <= max_digits:
        raise ValueError(f"label {digits!r} is not 1 to {max_digits} digits")
    coded = np.full((max_digits,), BLANK, dtype=np.int32)
    coded[:len(digits)] = [int(c) for c in digits]
    return coded


def decode_label(coded: Sequence[int]) -> str:
    """Inverse of :func:`encode_label`: the digits, padding dropped."""
    return "".join(str(int(v)) for v in coded if 0 <= int(v) < NUM_DIGIT_CLASSES)


def list_image_files(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Sorted paths of the files in ``folder`` whose extension (any case) is one of ``extensions``.

    Other files are not images and are left out; a missing folder or one with no such file is
    a ValueError.
    """
    if not os.path.exists(folder):
        raise ValueError(f"dataset folder {folder}: does not exist")
    if not os.path.isdir(folder):
        raise ValueError(f"dataset folder {folder}: is not a folder")
    names = sorted(n for n in os.listdir(folder)
                   if os.path.splitext(n)[1].lower() in extensions and os.path.isfile(os.path.join(folder, n)))
    if not names:
        raise ValueError(f"dataset folder {folder}: holds no {'/'.join(extensions)} files")
    return [os.path.join(folder, n) for n in names]


def list_png_files(folder: str) -> List[str]:
    """Sorted ``.png`` file paths in ``folder`` (the format of labelled train/test sets)."""
    return list_image_files(folder, (".png",))


def list_samples(dataset_path: str, max_digits: int = 4) -> List[Tuple[str, str]]:
    """``(path, label)`` for every PNG in the folder; any badly named file is an error."""
    return [(path, parse_label(path, max_digits)) for path in list_png_files(dataset_path)]


def _unreadable(path: str, err: Exception) -> str:
    kind = _FORMAT_NAMES.get(os.path.splitext(path)[1].lower())
    return f"{path}: not a readable {kind + ' ' if kind else ''}image ({type(err).__name__}: {err})"


def _check_image(path: str) -> Optional[str]:
    try:
        with Image.open(path) as image:
            if image.format == "PNG":
                image.verify()  # every chunk and its CRC, without decoding: catches truncated or damaged files
            else:
                image.load()    # other formats have no verify(): only decoding finds a truncated file
    except Exception as err:  # PIL raises many types; each means "not a readable image"
        return _unreadable(path, err)
    return None


def check_images(paths: Sequence[str], workers: int = 4) -> None:
    """Raise ValueError naming the first unreadable image (all files are checked, in parallel)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for problem in pool.map(_check_image, paths, chunksize=256):
            if problem:
                raise ValueError(problem)


def load_bgr(path: str) -> np.ndarray:
    """Read an image (of an animation, the first frame) as uint8 HWC in BGR order.

    Grayscale, RGBA, palette and other modes are converted to RGB first.
    """
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))
    except Exception as err:
        raise ValueError(_unreadable(path, err)) from None
    # The original swapped to BGR; kept so its normalisation statistics and checkpoints apply.
    return np.ascontiguousarray(rgb[:, :, ::-1])


class CaptchaSource:
    """Random-access source for ``GeneratorDataset``: index -> (BGR uint8 image, coded label)."""

    def __init__(self, samples: Sequence[Tuple[str, str]], max_digits: int = 4):
        self.samples = list(samples)
        self.labels = [encode_label(label, max_digits) for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return load_bgr(self.samples[index][0]), self.labels[index]


def network_height(captcha_height: int) -> int:
    """Images are resized to a height that is a multiple of 16, as the original did."""
    return math.ceil(captcha_height / 16) * 16


def image_transforms(height: int, width: int) -> list:
    """The original's per-image transforms: rescale, normalise, resize, HWC->CHW."""
    import mindspore.dataset.vision as vision

    return [
        vision.Rescale(1.0 / 255.0, 0.0),
        vision.Normalize(list(MEAN), list(STD)),
        vision.Resize((network_height(height), width)),
        vision.HWC2CHW(),
    ]


def _worker_count(requested: Optional[int]) -> int:
    cpus = os.cpu_count() or 1
    return max(1, min(requested or min(8, cpus), cpus))


def _pipeline(source, column_names: List[str], batch_size: int, captcha_height: int, captcha_width: int,
              workers: int, drop_remainder: bool, **sampling):
    """``GeneratorDataset`` over ``source`` + the image transforms + batching (train, eval and predict)."""
    import mindspore.dataset as ds

    dataset = ds.GeneratorDataset(source, column_names=column_names, num_parallel_workers=workers,
                                  python_multiprocessing=False, **sampling)
    dataset = dataset.map(operations=image_transforms(captcha_height, captcha_width), input_columns="image",
                          num_parallel_workers=workers)
    return dataset.batch(batch_size, drop_remainder=drop_remainder)


def create_dataset(dataset_path: str, batch_size: int = 1, num_shards: int = 1, shard_id: int = 0,
                   device_target: str = "CPU", max_captcha_digits: int = 4, captcha_width: int = 160,
                   captcha_height: int = 64, shuffle: bool = True, seed: int = 1,
                   num_parallel_workers: Optional[int] = None, drop_remainder: bool = True,
                   check_files: bool = True):
    """Build the batched ``(image float32 (B,3,H,W), label int32 (B,max_digits))`` dataset.

    The label coding is the same on every ``device_target``, so checkpoints, the loss and the
    metric are portable across platforms. Every file is validated up front (name and image
    data) so a bad file fails here, naming the file, instead of deep inside the pipeline.
    With several shards, every shard gets ``ceil(N / num_shards)`` samples (MindSpore's
    distributed sampler repeats at most ``num_shards - 1`` so all ranks run the same steps).
    """
    import mindspore.dataset as ds

    if device_target not in PLATFORMS:
        raise ValueError(f"device_target must be one of {', '.join(PLATFORMS)}, got {device_target!r}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if num_shards <= 0 or not 0 <= shard_id < num_shards:
        raise ValueError(f"shard_id must be in [0, num_shards), got shard_id={shard_id}, num_shards={num_shards}")
    workers = _worker_count(num_parallel_workers)

    samples = list_samples(dataset_path, max_captcha_digits)
    if check_files:
        check_images([path for path, _ in samples], workers=max(workers, 4))
    per_shard = len(samples) // num_shards
    if drop_remainder and per_shard < batch_size:
        raise ValueError(f"dataset folder {dataset_path}: {len(samples)} images give {per_shard} per shard "
                         f"({num_shards} shard(s)), fewer than one batch of {batch_size}")
    ds.config.set_seed(seed)
    return _pipeline(CaptchaSource(samples, max_captcha_digits), ["image", "label"], batch_size, captcha_height,
                     captcha_width, workers, drop_remainder, shuffle=shuffle, num_shards=num_shards,
                     shard_id=shard_id)


class _ImageOnlySource:
    """index -> (BGR image, index): for images whose names carry no label."""

    def __init__(self, paths: Sequence[str]):
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        return load_bgr(self.paths[index]), np.array(index, dtype=np.int32)


def create_predict_dataset(paths: Sequence[str], batch_size: int = 64, captcha_width: int = 160,
                           captcha_height: int = 64, num_parallel_workers: Optional[int] = None):
    """Batches of ``(image, index into paths)`` in order, through exactly the training transforms."""
    if not paths:
        raise ValueError("no images to predict")
    workers = _worker_count(num_parallel_workers)
    check_images(paths, workers=max(workers, 4))
    return _pipeline(_ImageOnlySource(paths), ["image", "index"], batch_size, captcha_height, captcha_width,
                     workers, drop_remainder=False, shuffle=False)


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
