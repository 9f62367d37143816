"""How well predict.py's confidence separates right reads from wrong ones on a labelled folder.

    python bench/bench_confidence.py [--dataset_path data/test] [--checkpoint_path pretrained/warpctc.ckpt]

Reads every image with predict.py's own functions (``collect_images``, ``predict``: the same
pipeline, decoding and confidence), takes the label from each file name
(``<index>-<label>.png`` or images plus ``labels.tsv``) and prints the overall accuracy, the accuracy of the most confident
50/80/90/95/99 % of the images, and the accuracy and share of the images whose confidence is
at least 0.5/0.9/0.99. The default folder is the 10,000-image test set
(``python process_data.py --splits test --quiet`` renders it into ``data/test``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model  # noqa: E402
from src.cli import report_error  # noqa: E402

TOP_SHARES = (0.50, 0.80, 0.90, 0.95, 0.99)
THRESHOLDS = (0.5, 0.9, 0.99)


def separation_table(reads: Sequence[Tuple[float, bool]]) -> List[str]:
    """Report lines for ``(confidence, read right)`` pairs: overall, most confident shares, thresholds."""
    total = len(reads)
    ranked = sorted(reads, key=lambda read: read[0], reverse=True)
    right = sum(hit for _, hit in reads)
    lines = [f"overall accuracy: {right / total:.2%} ({right}/{total})"]
    wrong_confidences = [conf for conf, hit in reads if not hit]
    right_confidences = [conf for conf, hit in reads if hit]
    if right_confidences and wrong_confidences:
        lines.append(f"mean confidence: right reads {sum(right_confidences) / len(right_confidences):.4f}, "
                     f"wrong reads {sum(wrong_confidences) / len(wrong_confidences):.4f}")
    lines += ["", "most confident  images  accuracy  confidence down to"]
    for share in TOP_SHARES:
        top = ranked[:max(1, math.ceil(share * total))]
        hits = sum(hit for _, hit in top)
        lines.append(f"{share:>13.0%}  {len(top):>6}  {hits / len(top):>8.2%}  {top[-1][0]:>18.4f}")
    lines += ["", "confidence >=  images   share  accuracy"]
    for threshold in THRESHOLDS:
        kept = [hit for conf, hit in reads if conf >= threshold]
        accuracy = f"{sum(kept) / len(kept):>8.2%}" if kept else f"{'-':>8}"
        lines.append(f"{threshold:>13}  {len(kept):>6}  {len(kept) / total:>6.1%}  {accuracy}")
    return lines


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset_path", default=os.path.join(REPO, "data", "test"),
                        help="labelled folder: <index>-<label>.png files or images + labels.tsv (default: <repo>/data/test)")
    parser.add_argument("--checkpoint_path", default=os.path.join(REPO, "pretrained", "warpctc.ckpt"),
                        help="checkpoint to read with (default: the released model)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    try:
        import predict
        from src.checkpoint.files import read_checkpoint
        from src.checkpoint.model import resolve_model
        from src.config import Config
        from src.data.labels import list_samples
        from src.run.runtime import set_up

        if args.batch_size <= 0:
            raise ValueError(f"--batch_size must be positive, got {args.batch_size}")
        if not os.path.isdir(args.dataset_path):
            raise ValueError(f"{args.dataset_path}: no such folder (render the test set with "
                             f"python process_data.py --splits test --quiet)")
        cfg = Config(batch_size=args.batch_size)
        # the labels are read with the checkpoint's own alphabet (labels.tsv folders work too)
        _, spec = resolve_model(args.checkpoint_path, read_checkpoint(args.checkpoint_path), cfg)
        paths, labels = zip(*list_samples(args.dataset_path, spec))
        set_up("CPU")
        results = predict.predict(list(paths), args.checkpoint_path, cfg, quiet=args.quiet)
    except ValueError as err:
        return report_error("bench_confidence.py", err)
    print(f"machine: {cpu_model()}")
    print(f"checkpoint: {args.checkpoint_path}; images: {len(paths)} from {args.dataset_path}")
    reads = [(result.confidence, result.text == label) for result, label in zip(results, labels)]
    print("\n".join(separation_table(reads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
