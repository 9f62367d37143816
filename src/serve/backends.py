"""What serve.py reads images with: a loaded model and its inference backend.

A :class:`ServedModel` is one checkpoint, loaded once: its spec, its network, and a backend that
runs a float batch to CTC logits. Batches are padded up to a few fixed sizes (:func:`buckets`),
so MindSpore's graph mode compiles, and onnxruntime's fixed-shape exports exist, for those sizes
only; every size is warmed up at start. Preprocessing and decoding are predict.py's own
(``image_transforms``, ``decode_with_confidence``), so the texts and confidences are predict.py's.
Nothing here knows HTTP.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from src.data.images import MEDIA_TYPES
from src.data.images import decode_bgr
from src.dataset import image_transforms
from src.decode import decode_with_confidence


# The formats predict.py reads (src/dataset.py IMAGE_EXTENSIONS), by Pillow's name for them.
SERVED_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "BMP": "image/bmp"}


class ImageProblem(ValueError):
    """A request's image that cannot be read: ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sha256_of(path: str) -> str:
    """The SHA-256 of a file, as the README lists the releases'."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def buckets(max_batch: int) -> Tuple[int, ...]:
    """The batch sizes forward passes are padded to: 1, 2, 4, ... up to ``max_batch`` (always included).

    Powers of 2 keep the padding under 2x (coarser steps cost a measured third of the throughput
    at 8 concurrent clients); each size costs one compile or export at start.
    """
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    return tuple(sizes) + (max_batch,)


def check_image_bytes(data: bytes, name: str, max_pixels: int) -> None:
    """ImageProblem naming ``name`` unless ``data`` starts like a PNG, JPEG, GIF or BMP of at most ``max_pixels``.

    Only the header is read, so a decompression bomb is refused before it is decoded.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            kind, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        if isinstance(err, Image.DecompressionBombError):
            raise ImageProblem(f"{name}: image of too many pixels ({err})", 413) from None
        if "MAX_TEXT_CHUNK" in str(err):
            raise ImageProblem(f"{name}: a PNG whose text metadata is over Pillow's limit of "
                               f"{PngImagePlugin.MAX_TEXT_CHUNK:,} bytes; strip its text chunks", 413) from None
        if isinstance(err, UnidentifiedImageError):
            raise ImageProblem(f"{name}: not an image (PNG, JPEG, GIF or BMP expected)", 415) from None
        raise ImageProblem(f"{name}: not a readable image ({' '.join(str(err).split())[:200]})", 415) from None
    if kind not in MEDIA_TYPES:
        raise ImageProblem(f"{name}: {kind} images are not read; send PNG, JPEG, GIF or BMP", 415)
    if width * height > max_pixels:
        raise ImageProblem(f"{name}: {width}x{height} is {width * height:,} pixels, over --max_pixels "
                           f"{max_pixels:,}", 413)


class Backend:
    """Runs a float32 ``(B, 3, H, W)`` batch (B one of the buckets) to ``(T, B, C)`` logits."""

    name = ""

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class MindSporeBackend(Backend):
    """The network itself, in the process's MindSpore mode (graph mode: one compile per bucket)."""

    name = "mindspore"

    def __init__(self, net):
        self.net = net

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import mindspore as ms

        return self.net(ms.Tensor(batch)).asnumpy()


def export_onnx(net, spec, size: int, path: str) -> None:
    """Export ``net`` at batch ``size`` to ONNX file ``path``, written under a temporary name and renamed
    into place (the cache serve.py and predict.py share never holds a partial file)."""
    import mindspore as ms

    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
        scratch = tempfile.mkdtemp(prefix=".export.", dir=folder)
    except OSError as err:
        raise ValueError(f"--onnx_cache {folder}: cannot be written ({err.strerror})") from None
    try:
        example = ms.Tensor(np.zeros((size, 3, spec.input_height, spec.width), np.float32))
        ms.export(net, example, file_name=os.path.join(scratch, "net"), file_format="ONNX")
        os.replace(os.path.join(scratch, "net.onnx"), path)
    finally:
        for leftover in os.listdir(scratch):
            os.remove(os.path.join(scratch, leftover))
        os.rmdir(scratch)


class OnnxRuntimeBackend(Backend):
    """The network exported to ONNX, one fixed-batch file per bucket, run by onnxruntime.

    Exports are cached under ``cache_dir`` by the checkpoint's SHA-256 and the batch size, so a
    restart exports nothing; each is written under a temporary name and renamed into place.
    """

    name = "onnxruntime"

    def __init__(self, net, spec, sha256: str, sizes: Sequence[int], cache_dir: str):
        import onnxruntime as ort

        folder = os.path.expanduser(cache_dir)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as err:
            raise ValueError(f"--onnx_cache {cache_dir}: cannot be made ({err.strerror})") from None
        self.sessions = {}
        for size in sizes:
            path = os.path.join(folder, f"{sha256}-b{size}.onnx")
            if not os.path.isfile(path):
                export_onnx(net, spec, size, path)
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.sessions[size] = (session, session.get_inputs()[0].name)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        session, input_name = self.sessions[len(batch)]
        return session.run(None, {input_name: batch})[0]


class ServedModel:
    """One checkpoint served under ``name``: its spec, backend and the preprocessing predict.py applies."""

    def __init__(self, name: str, checkpoint_path: str, cfg, platform: str = "CPU", given: Sequence[str] = ()):
        from mindspore.dataset.transforms import Compose

        from src.checkpoint.model import load_network
        self.name = name
        self.checkpoint_path = checkpoint_path
        self.sha256 = sha256_of(checkpoint_path)
        self.net, self.spec = load_network(checkpoint_path, cfg, platform, given)
        self.sizes = buckets(cfg.max_batch)
        self._transform = Compose(image_transforms(self.spec))
        if cfg.backend == "onnxruntime":
            self.backend: Backend = OnnxRuntimeBackend(self.net, self.spec, self.sha256, self.sizes, cfg.onnx_cache)
        else:
            self.backend = MindSporeBackend(self.net)
        blank = np.zeros((1, 3, self.spec.input_height, self.spec.width), np.float32)
        for size in self.sizes:       # compile (or load) every batch size before the first request
            self.backend(np.repeat(blank, size, axis=0))

    def info(self) -> Dict[str, object]:
        """What ``GET /models`` says of this model."""
        return {"name": self.name, "checkpoint": os.path.basename(self.checkpoint_path), "sha256": self.sha256,
                "charset": self.spec.charset, "max_length": self.spec.max_length,
                "image_size": {"width": self.spec.width, "height": self.spec.height},
                "network": dict(self.net.architecture), "ctc_steps": self.net.sequence_length,
                "normalization": self.spec.normalization, "backend": self.backend.name}

    def prepare(self, data: bytes, name: str, max_pixels: int) -> np.ndarray:
        """An image file's bytes as the network's ``(3, H, W)`` input; ImageProblem naming ``name`` if unreadable."""
        check_image_bytes(data, name, max_pixels)
        try:
            image = decode_bgr(data, name)
        except ValueError as err:
            raise ImageProblem(str(err), 400) from None
        return self._transform(image)

    def read(self, images: np.ndarray) -> List[Tuple[str, float]]:
        """``(text, confidence)`` of up to ``max_batch`` prepared images, padded to the next bucket."""
        count = len(images)
        size = next(size for size in self.sizes if size >= count)
        if size > count:
            images = np.concatenate([images, np.zeros((size - count,) + images.shape[1:], images.dtype)])
        logits = self.backend(np.ascontiguousarray(images, dtype=np.float32))
        return decode_with_confidence(self.spec, logits[:, :count])

