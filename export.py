"""Export a checkpoint for deployment: ``python export.py --checkpoint_path warpctc.ckpt``.

Writes ``<file_name>.mindir`` (default) with a fixed input shape ``(export_batch_size, 3, H, W)``;
the output is the logits ``(W, export_batch_size, 11)``, decoded with greedy CTC as in eval.
``--file_format CKPT`` writes a weights-only checkpoint (no optimizer state: ~14 MB), the
form in which trained models are released.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from src.cli import report_error
from src.config import add_config_arguments, config_from_args, explicit_overrides
from src.runtime import PLATFORMS

FORMATS = ("MINDIR", "AIR", "ONNX", "CKPT")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a WarpCTC checkpoint to MINDIR, ONNX, a weights-only CKPT "
                                                 "(for release) or AIR (Ascend).")
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint (.ckpt) to export")
    parser.add_argument("--file_name", default="warpctc", help="output file name without extension (default: warpctc)")
    parser.add_argument("--file_format", default="MINDIR", choices=FORMATS, help="output format (default: MINDIR)")
    parser.add_argument("--export_batch_size", type=int, default=1,
                        help="fixed batch size of the exported graph (default: 1)")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    return add_config_arguments(parser)


def export(args: argparse.Namespace) -> str:
    """Export and return the written file's path."""
    import mindspore as ms
    import numpy as np

    from src.checkpoint import load_network
    from src.dataset import network_height
    from src.runtime import set_up

    if args.export_batch_size <= 0:
        raise ValueError(f"--export_batch_size must be positive, got {args.export_batch_size}")
    if args.file_format == "AIR" and args.platform != "Ascend":
        raise ValueError("--file_format AIR is only available with --platform Ascend")
    cfg = config_from_args(args)
    set_up(args.platform)
    net = load_network(args.checkpoint_path, cfg, args.platform,
                       hidden_size_given="hidden_size" in explicit_overrides(args))
    dummy = ms.Tensor(np.zeros((args.export_batch_size, 3, network_height(cfg.captcha_height), cfg.captcha_width),
                               dtype=np.float32))
    if args.file_format == "CKPT":
        path = f"{args.file_name}.ckpt"
        if os.path.abspath(path) == os.path.abspath(args.checkpoint_path):
            raise ValueError(f"{path}: would overwrite the checkpoint being exported; choose another --file_name")
        ms.save_checkpoint(net, path)
        return path
    try:
        ms.export(net, dummy, file_name=args.file_name, file_format=args.file_format)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{args.file_format} export failed: {str(err).strip().splitlines()[0][:300]}") from None
    path = f"{args.file_name}.{args.file_format.lower()}"
    if not os.path.isfile(path):
        raise ValueError(f"{args.file_format} export wrote no file {path}")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = export(args)
    except ValueError as err:
        return report_error("export.py", err)
    shape = "" if args.file_format == "CKPT" else f" (input shape: {args.export_batch_size} x 3 x H x W, float32)"
    print(f"exported {os.path.abspath(path)}{shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
