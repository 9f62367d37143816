"""Labelled captchas -> ``mindspore.dataset`` pipeline of ``(image, label)`` batches.

The captchas come from a dataset folder (its labels read by ``src/data/labels.py``, its images by
``src/data/images.py``) or are rendered on the fly (``src/data/render.py``). On the fly
(``synthetic_images``), every sample is a pure function of the seed and its place in the stream (see :class:`SyntheticSource`). Labels are checked against the
:class:`CaptchaSpec` and coded by it (class indices right-padded with the blank), the same way
on every platform, and images are normalised as the spec says.
"""
from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from src.captcha_spec import CaptchaSpec, character_pools
from src.config import num_workers
from src.data.images import MAX_KEPT_BYTES, check_images, load_bgr
from src.data.labels import list_samples
from src.data.render import Renderer, RenderStyle, check_fits, resolve_fonts, sample_label

# The "fixed" normalisation: the original's per-channel statistics of its training set (BGR).
MEAN = (0.9010, 0.9049, 0.9025)
STD = (0.1521, 0.1347, 0.1458)

# The "per_image" normalisation divides by at least this std (one grey level), so that an image of
# one colour becomes zeros instead of noise blown up.
PER_IMAGE_STD_FLOOR = 1.0 / 255.0


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

    def __init__(self, renderer: Renderer, seed: int, count: int, label_classes: str = ""):
        self.renderer = renderer
        self.seed = seed
        self.count = count
        self.pools = character_pools(label_classes, renderer.spec.charset, "--label_classes")

    def __len__(self) -> int:
        return self.count

    def sample(self, index: int) -> Tuple[str, str]:
        """``(label, image seed)`` of global sample ``index``."""
        label = sample_label(random.Random(f"warpctc-synthetic-label-{self.seed}-{index}"), self.renderer.spec,
                             self.pools)
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
        # the same float32 values (tests/system/test_adapt_pipeline.py).
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
        src.serve.onnx_reader passes its numpy twin)."""
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
    if cfg.label_classes:
        line += f", each label of one of: {cfg.label_classes}"
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
        synthetic = (SyntheticSource(renderer, cfg.seed, cfg.synthetic_images, cfg.label_classes)
                     if cfg.synthetic_images else None)
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
    source = SyntheticSource(Renderer(spec, RenderStyle.from_config(cfg)), cfg.seed, per_epoch, cfg.label_classes)
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
    if not paths:
        raise ValueError("no images to predict")
    workers = num_workers(cfg)
    check_images(paths, workers=max(workers, 4), max_pixels=cfg.max_pixels)
    return _pipeline(_ImageOnlySource(paths), ["image", "index"], spec, cfg.batch_size, workers,
                     drop_remainder=False, shuffle=False)
