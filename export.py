"""Export a checkpoint for deployment: ``python export.py --checkpoint_path warpctc.ckpt``.

Writes ``<file_name>.mindir`` (default) with a fixed input shape ``(export_batch_size, 3, H, W)``;
the output is the logits ``(W, export_batch_size, classes)``, decoded with greedy CTC as in eval.
Beside a MINDIR/ONNX/AIR file goes ``<file>.json``: the alphabet, blank index, input shape,
channel order, rescale, normalisation (the checkpoint's: fixed mean/std or per image) and
resize rule, so the model can be used without MindSpore.
``--file_format CKPT`` writes a weights-only checkpoint (no optimizer state: ~14 MB) with a CRC,
the form in which trained models are released.

The file is written into a private temporary folder next to the target and moved into place
when complete, so a failed export (full disk) never leaves a truncated file or harms an
earlier export, and MindSpore's habit of chmod-ing the output folder to 0700 stays inside
the temporary folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Dict, Optional, Sequence

from src.cli import report_error
from src.config import INFERENCE_FIELDS, add_config_arguments, config_from_args, explicit_overrides
from src.run.runtime import PLATFORMS

FORMATS = ("MINDIR", "AIR", "ONNX", "CKPT")
# The export builds a zero input of the whole batch (126 MB at 1,024 images of 64 x 160): a bound
# keeps a mistyped size from taking the machine's memory.
MAX_EXPORT_BATCH = 1024


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a WarpCTC checkpoint to MINDIR, ONNX, a weights-only CKPT "
                                                 "(for release) or AIR (Ascend).")
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint (.ckpt) to export")
    parser.add_argument("--file_name", default="warpctc", help="output file; the format's extension is added unless given (default: warpctc)")
    parser.add_argument("--file_format", default="MINDIR", choices=FORMATS, help="output format (default: MINDIR)")
    parser.add_argument("--export_batch_size", type=int, default=1,
                        help=f"fixed batch size of the exported graph, 1 to {MAX_EXPORT_BATCH} (default: 1)")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    return add_config_arguments(parser, INFERENCE_FIELDS)


def output_path(file_name: str, file_format: str) -> str:
    """The file ``export`` writes: ``file_name`` plus the format's extension unless it has it."""
    ext = f".{file_format.lower()}"
    return file_name if file_name.lower().endswith(ext) else file_name + ext


def sidecar_path(model_path: str) -> str:
    """The JSON written beside an exported model: ``warpctc.onnx`` -> ``warpctc.onnx.json``."""
    return model_path + ".json"


def _normalization(spec) -> Dict[str, object]:
    """The normalisation step of the preprocessing, as the spec says, with its constants."""
    from src.dataset import MEAN, PER_IMAGE_STD_FLOOR, STD

    if spec.normalization == "per_image":
        return {"step": "x = (x - mean_c) / max(std_c, std_floor), where mean_c and std_c are the mean and the "
                        "population standard deviation of channel c over this image's pixels",
                "mean": None, "std": None, "std_floor": PER_IMAGE_STD_FLOOR}
    return {"step": "x = (x - mean) / std, per channel in BGR order", "mean": list(MEAN), "std": list(STD)}


def _resize_step(spec) -> str:
    """The resize step of the preprocessing, as the spec says."""
    if spec.resize == "keep_aspect":
        return (f"scale by s = min({spec.input_height} / image height, {spec.width} / image width) with bilinear "
                f"interpolation to round(height * s) x round(width * s) (at least 1, at most {spec.input_height} x "
                f"{spec.width}); place it on a {spec.input_height}x{spec.width} (height x width) canvas, left-aligned, "
                f"top row (canvas height - scaled height) // 2; fill the rest of the canvas with the per-channel "
                f"mean of the scaled image's border pixels (its first and last rows and columns)")
    return (f"resize to {spec.input_height}x{spec.width} (height x width) with bilinear "
            "interpolation if the image has another size")


# What src.dataset.decode_bgr does to a file before the pixels are scaled: a reader that follows the
# JSON must do the same, or it reads rotated, 16-bit and transparent images differently.
DECODE_STEPS = {
    "exif_orientation": "apply the EXIF Orientation tag (0x0112) if present: rotate/flip so the image is upright",
    "high_bit_depth": "integer grey values v in 0-65535 (16-bit, or 32-bit in that range) become (v + 128) // 257; "
                      "float grey values become round(v * 255) when none is above 1, else round(v), and must lie "
                      "in 0-255; the grey value is then used for all three channels",
    "transparency": "composite the RGBA image (palette and grey converted to RGBA first) over an opaque white "
                    "background, then drop the alpha channel",
}


def deployment_info(spec, net, model_file: str, batch_size: int) -> Dict[str, object]:
    """What a user without MindSpore needs to run an exported model (``net``) and read its output."""
    sequence_length = net.sequence_length
    norm = _normalization(spec)
    normalize_step = norm.pop("step")
    return {
        "model_file": model_file,
        "network": dict(net.architecture),
        "charset": spec.charset,
        "blank_index": spec.blank,
        "num_classes": spec.num_classes,
        "max_length": spec.max_length,
        "image_size": {"width": spec.width, "height": spec.height},
        "input": {
            "shape": [batch_size, 3, spec.input_height, spec.width],
            "dtype": "float32",
            "layout": "NCHW",
            "channel_order": "BGR",
            "preprocess": ["decode the file (of an animation, its first frame)",
                           "apply its EXIF orientation, as image viewers do (decode.exif_orientation)",
                           "16-bit, 32-bit integer and float grey pixels to 8 bits (decode.high_bit_depth)",
                           "an image with transparency (an alpha channel, or a transparent colour) composited "
                           "over opaque white (decode.transparency)",
                           "any other mode (grey, palette, CMYK) converted to RGB, then the channels reversed to BGR",
                           "x = x * rescale", normalize_step,
                           _resize_step(spec),
                           "HWC -> CHW, stack the batch"],
            "decode": DECODE_STEPS,
            "rescale": 1.0 / 255.0,
            "normalization": spec.normalization,
            **norm,
            "resize": {"height": spec.input_height, "width": spec.width, "interpolation": "bilinear",
                       "mode": spec.resize},
        },
        "output": {
            "shape": [sequence_length, batch_size, spec.num_classes],
            "layout": "TBC: one row of class scores (logits) per CTC step (the network's sequence_length), per image",
            "decoding": ("greedy CTC: " + ("set the scores of classes whose character is not in read_charset "
                                           "to -inf (blank_index stays), then " if spec.read_charset else "")
                         + "argmax over classes at each step, merge repeated classes, drop blank_index; "
                           "class i < blank_index is charset[i]"
                         + ("; with read_classes, one such read per pool with the other characters' scores "
                            "at -inf, and the read of the largest CTC log-likelihood plus log sum over the pools "
                            "holding it of share * (characters read / pool size) ** length (src/decode.py)"
                            if spec.read_classes else "")
                         + ("; then the text in lower case (ignore_case)" if spec.ignore_case else "")),
            "ignore_case": spec.ignore_case,
            "read_charset": spec.read_charset,
            "read_classes": spec.read_classes,
        },
    }


def _private_folder(path: str) -> str:
    """A new temporary folder beside ``path`` (same file system, so the final move is a rename)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"--file_name {path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"--file_name {path}: is a folder")
    try:
        return tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=folder)
    except OSError as err:
        raise ValueError(f"--file_name {path}: cannot write in {folder}: {err.strerror}") from None


def export(args: argparse.Namespace) -> str:
    """Export and return the written file's path."""
    if args.export_batch_size <= 0:
        raise ValueError(f"--export_batch_size must be positive, got {args.export_batch_size}")
    if args.export_batch_size > MAX_EXPORT_BATCH:
        raise ValueError(f"--export_batch_size {args.export_batch_size} is more than {MAX_EXPORT_BATCH}, the largest "
                         "batch export.py builds (its input is allocated whole); feed bigger sets in batches")
    import mindspore as ms
    import numpy as np

    from src.checkpoint.model import load_network, model_record
    from src.run.runtime import set_up

    if args.file_format == "AIR" and args.platform != "Ascend":
        raise ValueError("--file_format AIR is only available with --platform Ascend")
    cfg = config_from_args(args)
    path = output_path(args.file_name, args.file_format)
    if args.file_format == "CKPT" and os.path.abspath(path) == os.path.abspath(args.checkpoint_path):
        raise ValueError(f"{path}: would overwrite the checkpoint being exported; choose another --file_name")
    work = _private_folder(path)
    try:
        set_up(args.platform)
        net, spec = load_network(args.checkpoint_path, cfg, args.platform, given=explicit_overrides(args))
        dummy = ms.Tensor(np.zeros((args.export_batch_size, 3, spec.input_height, spec.width), dtype=np.float32))
        written = os.path.join(work, output_path("export", args.file_format))
        # MindSpore logs its own multi-line CRITICAL message on a failed write; the error below says it once.
        logging.disable(logging.CRITICAL)
        try:
            if args.file_format == "CKPT":
                # With a CRC: every reader checks it (src.checkpoint.read_checkpoint).
                ms.save_checkpoint(net, written, append_dict=model_record(spec, net.architecture), crc_check=True)
            else:
                ms.export(net, dummy, file_name=os.path.join(work, "export"), file_format=args.file_format)
            if not os.path.isfile(written):
                raise ValueError(f"{args.file_format} export wrote no file {path}")
            if args.file_format != "CKPT":
                # Beside the model, everything a non-MindSpore user needs to feed it and read it.
                with open(os.path.join(work, "export.json"), "w", encoding="utf-8") as handle:
                    json.dump(deployment_info(spec, net, os.path.basename(path), args.export_batch_size), handle,
                              indent=1, ensure_ascii=False)
                    handle.write("\n")
                os.replace(os.path.join(work, "export.json"), sidecar_path(path))
            os.replace(written, path)
        except OSError as err:
            kept = "the existing file is left as it was" if os.path.exists(path) else "nothing was written"
            raise ValueError(f"{path}: cannot write the export: {err.strerror or err}; {kept}") from None
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"{args.file_format} export failed: {str(err).strip().splitlines()[0][:300]}") from None
        finally:
            logging.disable(logging.NOTSET)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = export(args)
    except ValueError as err:
        return report_error("export.py", err)
    print(f"exported {os.path.abspath(path)}")
    if args.file_format != "CKPT":
        print(f"how to feed it and read its output: {os.path.abspath(sidecar_path(path))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
