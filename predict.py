"""Read captchas: ``python predict.py --checkpoint_path warpctc.ckpt IMAGE_OR_FOLDER [...]``.

Prints ``file<TAB>digits`` per image, in the order given (folders: their PNGs sorted by name).
File names need not carry a label. Preprocessing is the training/eval pipeline itself.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from src.cli import report_error
from src.config import add_config_arguments, config_from_args, explicit_overrides, num_workers
from src.runtime import PLATFORMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Recognise the digits of captcha images with a checkpoint.")
    parser.add_argument("inputs", nargs="+", help="PNG files and/or folders of PNG files")
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint (.ckpt) to use")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU)")
    return add_config_arguments(parser)


def collect_images(inputs: Sequence[str]) -> List[str]:
    """Expand folders to their sorted PNGs; every named file must exist."""
    from src.dataset import list_png_files

    paths: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            paths.extend(list_png_files(item))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise ValueError(f"{item}: no such file or folder")
    return paths


def predict(paths: Sequence[str], checkpoint_path: str, cfg, platform: str = "CPU",
            hidden_size_given: bool = False) -> List[Tuple[str, str]]:
    """``(path, digits)`` for every image, in order."""
    from src.checkpoint import load_network
    from src.dataset import create_predict_dataset
    from src.metric import greedy_decode

    net = load_network(checkpoint_path, cfg, platform, hidden_size_given)
    dataset = create_predict_dataset(paths, batch_size=cfg.batch_size, captcha_width=cfg.captcha_width,
                                     captcha_height=cfg.captcha_height, num_parallel_workers=num_workers(cfg))
    results: List[Tuple[str, str]] = []
    for image, index in dataset.create_tuple_iterator():
        for i, digits in zip(index.asnumpy().tolist(), greedy_decode(net(image).asnumpy())):
            results.append((paths[i], digits))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from src.runtime import set_up

        cfg = config_from_args(args)
        paths = collect_images(args.inputs)
        set_up(args.platform, device_id=args.device_id)
        results = predict(paths, args.checkpoint_path, cfg, args.platform,
                          hidden_size_given="hidden_size" in explicit_overrides(args))
    except ValueError as err:
        return report_error("predict.py", err)
    for path, digits in results:
        print(f"{path}\t{digits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
