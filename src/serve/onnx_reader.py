"""Reading captchas with onnxruntime and numpy alone: ``predict.py --backend onnxruntime``.

A checkpoint is exported to ONNX once, when first read this way (that run imports MindSpore), and
cached by its SHA-256 under ``--onnx_cache`` beside its captcha spec; serve.py's onnxruntime
backend shares the same files. Later runs find the cache and never import MindSpore, so one
captcha is read in well under a second, cold. The preprocessing is a numpy twin of
``src.dataset.image_transforms`` (tests/system/test_onnx_reader.py holds them equal).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from src.captcha_spec import READING_FIELDS, CaptchaSpec
from src.dataset import MEAN, STD, KeepAspectFit, PerImageStandardize
from src.decode import decode_with_confidence
from src.serve.backends import sha256_of

# The batch sizes exported: full batches of 16, then single images (both among serve.py's buckets).
BATCH_SIZES = (16, 1)


def _bilinear_weights(size_out: int, size_in: int) -> np.ndarray:
    """The ``(size_out, size_in)`` matrix of a half-pixel-centred bilinear resize (MindSpore's and OpenCV's)."""
    weights = np.zeros((size_out, size_in), np.float64)
    position = np.clip((np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5, 0.0, size_in - 1)
    left = np.floor(position).astype(np.int64)
    right = np.minimum(left + 1, size_in - 1)
    fraction = position - left
    rows = np.arange(size_out)
    np.add.at(weights, (rows, left), 1.0 - fraction)
    np.add.at(weights, (rows, right), fraction)
    return weights


def resize_bilinear(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A float HWC image resized to ``height`` x ``width``."""
    if image.shape[:2] == (height, width):
        return image
    vertical = _bilinear_weights(height, image.shape[0])
    horizontal = _bilinear_weights(width, image.shape[1])
    resized = np.einsum("ij,jkc,lk->ilc", vertical, image.astype(np.float64), horizontal)
    return resized.astype(np.float32)


def network_input(bgr: np.ndarray, spec: CaptchaSpec) -> np.ndarray:
    """A decoded BGR uint8 image as the network's float32 ``(3, H, W)`` input, as the MindSpore pipeline makes it:
    the same normalisation and fit (``src.dataset``), with :func:`resize_bilinear` for MindSpore's Resize."""
    image = bgr.astype(np.float32) * np.float32(1.0 / 255.0)
    if spec.normalization == "per_image":
        image = PerImageStandardize()(image)
    else:
        image = ((image - np.array(MEAN, np.float32)) / np.array(STD, np.float32)).astype(np.float32)
    if spec.resize == "keep_aspect":
        image = KeepAspectFit(spec.input_height, spec.width, resize=resize_bilinear)(image)
    else:
        image = resize_bilinear(image, spec.input_height, spec.width)
    return np.ascontiguousarray(image.transpose(2, 0, 1))


def cache_paths(sha256: str, cache_dir: str) -> Tuple[str, Dict[int, str]]:
    """``(spec JSON, {batch size: ONNX file})`` of a checkpoint in the cache."""
    folder = os.path.expanduser(cache_dir)
    return (os.path.join(folder, f"{sha256}.spec.json"),
            {size: os.path.join(folder, f"{sha256}-b{size}.onnx") for size in BATCH_SIZES})


class OnnxReader:
    """A checkpoint's exported ONNX files (batch 16 and 1) and its spec, run by onnxruntime."""

    def __init__(self, spec: CaptchaSpec, models: Dict[int, str]):
        import onnxruntime as ort

        self.spec = spec
        self.sessions = {}
        for size, path in models.items():
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.sessions[size] = (session, session.get_inputs()[0].name)

    @classmethod
    def for_checkpoint(cls, checkpoint_path: str, cfg, platform: str = "CPU", given: Sequence[str] = (),
                       reading: Optional[Dict[str, object]] = None) -> "OnnxReader":
        """The reader of ``checkpoint_path``, exported into ``cfg.onnx_cache`` first if it is not there.

        ``given`` options other than reading ones (``reading``: e.g. ``{"read_charset": "0123"}``) are
        checked against the checkpoint as predict.py's MindSpore path does, so they take that path once.
        """
        reading = dict(reading or {})
        spec_path, models = cache_paths(sha256_of(checkpoint_path), cfg.onnx_cache)
        model_options = [name for name in given if name not in READING_FIELDS and name not in ("backend", "onnx_cache",
                                                                                              "batch_size",
                                                                                              "num_parallel_workers",
                                                                                              "max_pixels")]
        if model_options or not (os.path.isfile(spec_path) and all(os.path.isfile(p) for p in models.values())):
            cls.export(checkpoint_path, cfg, platform, given, spec_path, models)
        try:
            with open(spec_path, encoding="utf-8") as handle:
                spec = CaptchaSpec.from_json(handle.read(), source=spec_path)
        except OSError as err:
            raise ValueError(f"{spec_path}: cannot be read ({err.strerror})") from None
        if reading:
            spec = dataclasses.replace(spec, **reading)     # --ignore_case, --read_charset: the user's
        return cls(spec, models)

    @staticmethod
    def export(checkpoint_path: str, cfg, platform: str, given: Sequence[str], spec_path: str,
               models: Dict[int, str]) -> None:
        """Load the checkpoint with MindSpore (checking ``given``), export each batch size, write the spec."""
        from src.checkpoint.model import load_network
        from src.run.runtime import set_up
        from src.serve.backends import export_onnx

        set_up(platform)
        net, spec = load_network(checkpoint_path, cfg, platform, [g for g in given if g not in READING_FIELDS])
        for size, path in models.items():
            if not os.path.isfile(path):
                export_onnx(net, spec, size, path)
        # The checkpoint's own spec, its reading options included (``given`` left them out above).
        temporary = f"{spec_path}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(spec.to_json())
        os.replace(temporary, spec_path)

    def read(self, images: Sequence[np.ndarray]) -> List[Tuple[str, float]]:
        """``(text, confidence)`` of each decoded BGR image (``src.dataset.decode_bgr``), in order."""
        results: List[Tuple[str, float]] = []
        start = 0
        while start < len(images):
            size = next(s for s in BATCH_SIZES if s <= len(images) - start)
            batch = np.stack([network_input(image, self.spec) for image in images[start:start + size]])
            session, name = self.sessions[size]
            results.extend(decode_with_confidence(self.spec, session.run(None, {name: batch})[0]))
            start += size
        return results
