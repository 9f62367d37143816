"""Read captchas: ``python predict.py --checkpoint_path warpctc.ckpt IMAGE_OR_FOLDER [...]``.

Prints ``file<TAB>text<TAB>confidence`` per image, in the order given (folders: their PNG,
JPEG, GIF and BMP files sorted by name; a GIF is read from its first frame). File names need
not carry a label. Preprocessing is the training/eval pipeline itself, and the text is eval's
greedy CTC decoding. The confidence (4 decimals, in [0, 1]) is the model's probability of
the decoded text: the CTC probability summed over every alignment that spells it. Progress
goes to stderr unless ``--quiet``. The output is a valid ``labels.tsv``: a path that starts
with ``#`` (a comment there) is printed as ``./#...``, and a path holding a tab or a line break
is refused before the model loads.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Iterable, List, NamedTuple, Optional, Sequence

from src.cli import report_error, write_stdout
from src.config import INFERENCE_FIELDS, ServingConfig, add_config_arguments, config_from_args, explicit_overrides
from src.decode import decode_with_confidence
from src.run.runtime import PLATFORMS


class Prediction(NamedTuple):
    """One read image: its path, the decoded text and the confidence of that text."""

    path: str
    text: str
    confidence: float


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Read the text of captcha images with a checkpoint.")
    parser.add_argument("inputs", nargs="+",
                        help="image files (PNG, JPEG, GIF: first frame, BMP) and/or folders; a folder's "
                             ".png/.jpg/.jpeg/.gif/.bmp files are read in name order, its other files are "
                             "not images and are not listed")
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint (.ckpt) to use")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return add_config_arguments(parser, INFERENCE_FIELDS + ("backend", "onnx_cache"))


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Expand folders to their image files sorted by name; every named file must exist.

    Each path must fit one line of the TSV output: one with a tab or a line break, or that is
    not UTF-8, is a ValueError naming it.
    """
    from src.data.images import list_image_files, regular_file_problem
    from src.data.labels import check_tsv_name

    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(list_image_files(item))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(regular_file_problem(item) if os.path.lexists(item) else f"{item}: no such file or folder")
    for path in paths:
        check_tsv_name(path)
    return paths


def tsv_line(result: Prediction) -> str:
    """``file<TAB>text<TAB>confidence``, as ``labels.tsv`` reads it back (``#...`` there is a comment: ``./#...``)."""
    path = f"./{result.path}" if result.path.startswith("#") else result.path
    return f"{path}\t{result.text}\t{result.confidence:.4f}"


def predict(paths: Sequence[str], checkpoint_path: str, cfg, platform: str = "CPU",
            given: Iterable[str] = (), quiet: bool = False) -> List[Prediction]:
    """A :class:`Prediction` for every image, in order; progress on stderr unless ``quiet``.

    The checkpoint says what it reads; ``given`` names options set explicitly (a contradiction
    with the checkpoint is an error).
    """
    from src.checkpoint.model import load_network
    from src.cli import Progress
    from src.dataset import create_predict_dataset

    net, spec = load_network(checkpoint_path, cfg, platform, given)
    dataset = create_predict_dataset(paths, cfg, spec)
    progress = Progress("predict", len(paths), quiet=quiet)
    results: List[Prediction] = []
    for image, index in dataset.create_tuple_iterator():
        decoded = decode_with_confidence(spec, net(image).asnumpy())
        for i, (text, confidence) in zip(index.asnumpy().tolist(), decoded):
            results.append(Prediction(paths[i], text, confidence))
        progress.add(len(decoded))
    return results


def predict_onnxruntime(paths: Sequence[str], checkpoint_path: str, cfg, platform: str = "CPU",
                        given: Iterable[str] = ()) -> List[Prediction]:
    """:func:`predict` through the checkpoint's ONNX export, with onnxruntime and numpy: MindSpore is
    imported only the first time a checkpoint is read this way, to export it into ``cfg.onnx_cache``."""
    from src.captcha_spec import reading_given
    from src.data.images import MAX_KEPT_BYTES, check_images, load_bgr
    from src.serve.onnx_reader import OnnxReader

    if not paths:
        raise ValueError("no images to predict")
    given = list(given)
    images = check_images(paths, keep_bytes=MAX_KEPT_BYTES, max_pixels=cfg.max_pixels)
    reader = OnnxReader.for_checkpoint(checkpoint_path, cfg, platform, given,
                                       reading={name: getattr(cfg, name) for name in reading_given(given)})
    if images is None:                  # too many to keep decoded: read them again, a batch at a time
        images = [load_bgr(path) for path in paths]
    return [Prediction(path, text, confidence) for path, (text, confidence) in zip(paths, reader.read(images))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args, ServingConfig)
        paths = collect_images(args.inputs)
        if cfg.backend == "onnxruntime":
            results = predict_onnxruntime(paths, args.checkpoint_path, cfg, args.platform,
                                          given=explicit_overrides(args))
        else:
            from src.run.runtime import set_up

            set_up(args.platform, device_id=args.device_id)
            results = predict(paths, args.checkpoint_path, cfg, args.platform,
                              given=explicit_overrides(args), quiet=args.quiet)
        write_stdout(tsv_line(result) for result in results)
    except ValueError as err:
        return report_error("predict.py", err)
    except RuntimeError as err:        # an image that went bad after the up-front check
        from src.dataset import pipeline_error

        return report_error("predict.py", pipeline_error(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
