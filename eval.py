"""Evaluate a checkpoint: ``python eval.py --dataset_path data/test --checkpoint_path warpctc.ckpt``.

Prints ``result: {'WarpCTCAccuracy': ..., 'CER': ...}`` (exact-sequence accuracy, as the
original, plus the character error rate) and the accuracy per label length on stdout;
progress lines go to stderr unless ``--quiet``.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

from src.cli import report_error, write_stdout
from src.config import INFERENCE_FIELDS, add_config_arguments, config_from_args, explicit_overrides
from src.run.runtime import PLATFORMS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Evaluate a WarpCTC checkpoint on a folder of captcha PNGs.")
    parser.add_argument("--dataset_path", required=True, help="labelled folder: <index>-<label>.png files, or images plus labels.tsv")
    parser.add_argument("--checkpoint_path", required=True, help="checkpoint (.ckpt) to evaluate")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return add_config_arguments(parser, INFERENCE_FIELDS)


def _progress_callback(progress):
    """A ``Model.eval`` callback counting the images of every evaluated batch into ``progress``."""
    from mindspore.train import Callback

    class _EvalProgress(Callback):
        def on_eval_step_end(self, run_context):
            _, label = run_context.original_args().net_outputs
            progress.add(int(label.shape[0]))

    return _EvalProgress()


def evaluate(args: argparse.Namespace) -> dict:
    """Run the evaluation; returns the metrics plus accuracy by label length and throughput."""
    from mindspore.train import Model

    from src.checkpoint.model import load_network
    from src.cli import Progress
    from src.data.labels import list_samples
    from src.dataset import create_dataset
    from src.data.manifest import dataset_report
    from src.metric import WarpCTCAccuracy, WarpCTCCharErrorRate
    from src.run.runtime import set_up
    from src.ctc_head import WithLabelCell

    cfg = config_from_args(args)
    info = set_up(args.platform, device_id=args.device_id)
    write_stdout(dataset_report(args.dataset_path))
    # The checkpoint says what it reads (alphabet, length, size, hidden size).
    net, spec = load_network(args.checkpoint_path, cfg, info.platform, given=explicit_overrides(args))
    # Every image counts: the last, smaller batch is kept.
    dataset = create_dataset(args.dataset_path, cfg, spec, training=False, platform=info.platform)
    accuracy = WarpCTCAccuracy(spec)
    model = Model(net, eval_network=WithLabelCell(net), metrics={"WarpCTCAccuracy": accuracy,
                                                               "CER": WarpCTCCharErrorRate(spec)})
    progress = Progress("eval", len(list_samples(args.dataset_path, spec)), quiet=args.quiet)
    start = time.time()
    result = model.eval(dataset, callbacks=[_progress_callback(progress)], dataset_sink_mode=False)
    elapsed = time.time() - start
    images = sum(counts[1] for counts in accuracy.by_length.values())
    return {"result": result, "by_length": accuracy.accuracy_by_length(), "images": images,
            "seconds": elapsed}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        out = evaluate(args)
        by_length = ", ".join(f"{k} char(s): {v:.4f}" for k, v in out["by_length"].items())
        write_stdout([f"result: {out['result']}", f"accuracy by label length: {by_length}",
                      f"evaluated {out['images']} images in {out['seconds']:.1f} s "
                      f"({out['images'] / max(out['seconds'], 1e-9):.0f} images/s)"])
    except ValueError as err:
        return report_error("eval.py", err)
    except RuntimeError as err:        # an image that went bad after the up-front check
        from src.dataset import pipeline_error

        return report_error("eval.py", pipeline_error(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
