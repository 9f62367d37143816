"""Labelled captchas -> ``mindspore.dataset`` pipeline of ``(image, label)`` batches.

The captchas come from a dataset folder or are rendered on the fly. A dataset folder is
either ``<index>-<label>.<ext>`` files (what ``process_data.py`` renders: the label is the
part after the first ``-``), or images of any names plus a ``labels.tsv`` (``file<TAB>label``
per line, UTF-8: the format predict.py prints, so corrected predictions become labels).
On the fly (``synthetic_images``), every sample is a pure function of the seed and its place
in the stream (see :class:`SyntheticSource`). Labels are checked against the
:class:`CaptchaSpec` and coded by it (class indices right-padded with the blank), the same way
on every platform, and images are normalised as the spec says.
"""
from __future__ import annotations

import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from src.captcha_spec import CaptchaSpec
from src.render import Renderer, RenderStyle, resolve_fonts, sample_label

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


def parse_label(file_name: str, spec: CaptchaSpec) -> str:
    """The label after the first ``-`` of ``<index>-<label>.<ext>``; ValueError naming the file if invalid."""
    stem = os.path.splitext(os.path.basename(file_name))[0]
    if "-" not in stem:
        raise ValueError(f"{file_name}: name is not <index>-<label>.<ext>; name files so, or list the folder's "
                         f"labels in {LABELS_FILE}")
    return spec.check_label(stem.split("-", 1)[1], source=file_name)


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


def read_labels_tsv(folder: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` for every line of ``<folder>/labels.tsv``, which must list every image of the folder.

    A line is ``file<TAB>label`` (a third column, predict.py's confidence, is ignored). ``file``
    names an image in the folder; leading folders are dropped, so predict.py's output can be
    used as it is. Empty lines and lines starting with ``#`` are skipped.
    """
    path = os.path.join(folder, LABELS_FILE)
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ValueError(f"{path}: cannot be read ({err.strerror})") from None
    samples, seen = [], {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise ValueError(f"{path}:{number}: expected file<TAB>label, got {len(fields)} field(s): {line[:80]!r}")
        name = os.path.basename(fields[0].replace("\\", "/"))
        if name in seen:
            raise ValueError(f"{path}:{number}: {name} is listed twice (first on line {seen[name]})")
        seen[name] = number
        image = os.path.join(folder, name)
        if not os.path.isfile(image):
            raise ValueError(f"{path}:{number}: {name} does not exist in {folder}")
        samples.append((image, spec.check_label(fields[1], source=f"{path}:{number}")))
    if not samples:
        raise ValueError(f"{path}: lists no images")
    unlisted = [p for p in list_image_files(folder) if os.path.basename(p) not in seen]
    if unlisted:
        raise ValueError(f"{path}: {len(unlisted)} image(s) of the folder are not listed "
                         f"(e.g. {os.path.basename(unlisted[0])}); list every image or move it out")
    return samples


def list_samples(dataset_path: str, spec: CaptchaSpec) -> List[Tuple[str, str]]:
    """``(path, label)`` of every image of a dataset folder (from ``labels.tsv`` or the file names)."""
    if os.path.isfile(os.path.join(dataset_path, LABELS_FILE)):
        return read_labels_tsv(dataset_path, spec)
    return [(path, parse_label(path, spec)) for path in list_image_files(dataset_path)]


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

    def __init__(self, samples: Sequence[Tuple[str, str]], spec: CaptchaSpec):
        self.samples = list(samples)
        self.labels = [spec.encode(label, source=path) for path, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
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
    freshly shuffled each epoch, plus ``synthetic`` new stream samples, in one shuffled order.

    Epoch ``e`` shuffles the folder with ``random.Random("warpctc-mix-<seed>-<e>")``; shard ``s``
    of ``N`` takes every N-th image of that order from the ``s``-th (``len(folder) // N`` each),
    and stream positions as :class:`StreamSampler` does. Like it, a copy starts at epoch 0 and
    each iteration is the next epoch, so a resumed run reads what an uninterrupted one would.
    """

    def __init__(self, folder_count: int, synthetic: int, seed: int, num_shards: int = 1, shard_id: int = 0):
        self.folder_count = folder_count
        self.synthetic = synthetic
        self.seed = seed
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.epoch = 0

    def __deepcopy__(self, memo) -> "MixedSampler":
        return MixedSampler(self.folder_count, self.synthetic, self.seed, self.num_shards, self.shard_id)

    def __len__(self) -> int:
        return self.folder_count // self.num_shards + self.synthetic

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        rng = random.Random(f"warpctc-mix-{self.seed}-{epoch}")
        order = list(range(self.folder_count))
        rng.shuffle(order)
        mine = order[self.shard_id::self.num_shards][:self.folder_count // self.num_shards]
        codes = [2 * (epoch * self.folder_count + i) for i in mine]
        first = epoch * self.synthetic
        codes += [2 * (p * self.num_shards + self.shard_id) + 1 for p in range(first, first + self.synthetic)]
        rng.shuffle(codes)
        return iter(codes)


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
        # float64 statistics: a float32 sum over 10,000 pixels is off by ~1e-4.
        mean = image.mean(axis=(0, 1), dtype=np.float64, keepdims=True)
        std = np.maximum(image.std(axis=(0, 1), dtype=np.float64, keepdims=True), PER_IMAGE_STD_FLOOR)
        return ((image - mean) / std).astype(np.float32)


def image_transforms(spec: CaptchaSpec) -> list:
    """The per-image transforms: rescale, normalise (as ``spec.normalization`` says), resize to the
    network's input, HWC->CHW. With "fixed", the original's."""
    import mindspore.dataset.vision as vision

    if spec.normalization == "per_image":
        normalize = PerImageStandardize()
    else:
        normalize = vision.Normalize(list(MEAN), list(STD))
    return [
        vision.Rescale(1.0 / 255.0, 0.0),
        normalize,
        vision.Resize((spec.input_height, spec.width)),
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
    here, naming it, not deep inside the pipeline. With several shards each gets
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
    source = CaptchaSource(samples, spec)
    check_images([path for path, _ in samples], workers=max(workers, 4))
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
        sampler = MixedSampler(len(samples), cfg.synthetic_images // num_shards, cfg.seed, num_shards, shard_id)
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
    check_images(paths, workers=max(workers, 4))
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
