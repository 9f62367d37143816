"""Zero-shot reading of captchas of many kinds, by a checkpoint and by ddddocr, on the same images.

Renders each set afresh (seeds ``bench-universal-<set>-<index>``, which no training draws), reads it
with the checkpoint (``predict.predict``, the path predict.py takes) and, given ``--ddddocr_python``
(the interpreter of a virtual environment with ``bench/requirements-ddddocr.txt``: ddddocr is never
installed in the product's), with ddddocr 1.6.1's default model through ``bench/ddddocr_read.py``.
Prints one row per set: exact accuracy and accuracy with case folded, of each reader::

    python3 -m venv ddvenv && ddvenv/bin/pip install -r bench/requirements-ddddocr.txt
    python bench/bench_universal.py --checkpoint_path pretrained/crnn_universal.ckpt \
        --ddddocr_python ddvenv/bin/python --count 500

Each set is a folder of ``<index>.png`` and a ``labels.tsv`` (README "Your own captchas"), kept with
``--work_dir``; ``--render_only`` draws them and reads none::

    python bench/bench_universal.py --render_only --work_dir sets --count 150 --sets ink_digits,ink_lower5

The sets:

- ``original``, ``alnum``: the captcha package's drawing of the original task (digits, 1-4, 160x64)
  and of configs/alnum.yaml (digits and capitals, 1-4, 160x64);
- ``<style>_digits``, ``<style>_lower5``, ``<style>_mixed``: each style of research/heldout_styles.py
  (ink, stamp, outline: fonts and drawing code no training uses) at three geometries: digits 1-4
  at 160x64; 5 of lower case and digits at 200x50; 4-7 of digits, upper and lower case at 240x60.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model  # noqa: E402
from research import heldout_styles  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402

DIGITS = "0123456789"
LOWER = "abcdefghijklmnopqrstuvwxyz"
UPPER = LOWER.upper()


class BenchSet(NamedTuple):
    """A set of captchas: who draws them, their alphabet, lengths and size."""

    style: str            # "captcha" (the package's drawing) or a research/heldout_styles.py style
    charset: str
    lengths: Tuple[int, int]
    width: int
    height: int


SETS: Dict[str, BenchSet] = {
    "original": BenchSet("captcha", DIGITS, (1, 4), 160, 64),
    "alnum": BenchSet("captcha", DIGITS + UPPER, (1, 4), 160, 64),
}
for _style in ("ink", "stamp", "outline"):
    SETS[f"{_style}_digits"] = BenchSet(_style, DIGITS, (1, 4), 160, 64)
    SETS[f"{_style}_lower5"] = BenchSet(_style, DIGITS + LOWER, (5, 5), 200, 50)
    SETS[f"{_style}_mixed"] = BenchSet(_style, DIGITS + UPPER + LOWER, (4, 7), 240, 60)


def render_set(name: str, folder: str, count: int) -> List[Tuple[str, str]]:
    """Draw ``count`` captchas of set ``name`` into ``folder``, with their ``labels.tsv``; ``[(path, label)]``."""
    from src.data.render import Renderer

    bench_set = SETS[name]
    os.makedirs(folder, exist_ok=True)
    renderer = None
    if bench_set.style == "captcha":
        renderer = Renderer(CaptchaSpec(charset=bench_set.charset, max_length=bench_set.lengths[1],
                                        width=bench_set.width, height=bench_set.height))
    samples = []
    for index in range(count):
        rng = random.Random(f"bench-universal-{name}-{index}")
        length = rng.randint(*bench_set.lengths)
        label = "".join(rng.choice(bench_set.charset) for _ in range(length))
        path = os.path.join(folder, f"{index:05d}.png")
        if renderer is not None:
            image = renderer.render(label, f"bench-universal-{name}-image-{index}")
        else:
            draw, _ = heldout_styles.STYLES[bench_set.style]
            image = draw(label, rng, bench_set.width, bench_set.height)
        image.save(path)
        samples.append((path, label))
    with open(os.path.join(folder, "labels.tsv"), "w", encoding="utf-8") as handle:
        handle.writelines(f"{os.path.basename(path)}\t{label}\n" for path, label in samples)
    return samples


def read_ours(paths: List[str], checkpoint: str, alphabet: str = "", classes: Optional[str] = None) -> List[str]:
    """The checkpoint's reading of each image, as predict.py's; given ``alphabet``, with --read_charset it,
    given ``classes`` (``""`` too), with --read_classes them."""
    from predict import predict
    from src.config import Config

    given = (("read_charset",) if alphabet else ()) + (("read_classes",) if classes is not None else ())
    return [result.text for result in predict(paths, checkpoint, Config(read_charset=alphabet,
                                                                        read_classes=classes or ""),
                                              given=given, quiet=True)]


def read_ddddocr(paths: List[str], python: str, alphabet: str = "") -> List[str]:
    """ddddocr's reading of each image, run in its own interpreter (its own virtual environment); given
    ``alphabet``, restricted to it before decoding."""
    proc = subprocess.run([python, os.path.join(REPO, "bench", "ddddocr_read.py"), *([alphabet] if alphabet else [])],
                          input="\n".join(paths), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"ddddocr_read.py failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout)


def scores(texts: List[str], labels: List[str]) -> Tuple[float, float]:
    """(exact accuracy, accuracy with case folded)."""
    exact = sum(t == label for t, label in zip(texts, labels)) / len(labels)
    folded = sum(t.casefold() == label.casefold() for t, label in zip(texts, labels)) / len(labels)
    return exact, folded


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", default=os.path.join(REPO, "pretrained", "crnn_universal.ckpt"))
    parser.add_argument("--ddddocr_python", help="python of a virtual environment with bench/requirements-ddddocr.txt")
    parser.add_argument("--count", type=int, default=500, help="captchas per set (default: %(default)s)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated set names (default: all)")
    parser.add_argument("--work_dir", help="keep the rendered sets here (default: a temporary folder)")
    parser.add_argument("--render_only", action="store_true",
                        help="only draw the sets into --work_dir (a folder with labels.tsv each); read none")
    parser.add_argument("--json_out", help="also append one JSON line per set to this file")
    parser.add_argument("--told_alphabet", action="store_true",
                        help="tell both readers each set's alphabet: ours by --read_charset, ddddocr by masking its "
                             "classes to it before decoding (what a user who knows the captcha's characters does)")
    parser.add_argument("--read_classes", default=None,
                        help="our reader's --read_classes (the same for every set, so still zero-shot), e.g. "
                             "digits,lower,upper,lower+digits,upper+digits,all, or '' for none; default: the "
                             "checkpoint's own. ddddocr's reading is unchanged")
    args = parser.parse_args(argv)
    try:
        names = [n.strip() for n in args.sets.split(",") if n.strip()]
        unknown = [n for n in names if n not in SETS]
        if unknown:
            raise ValueError(f"--sets: no set {unknown[0]!r}; the sets are {', '.join(SETS)}")
        if args.count <= 0:
            raise ValueError(f"--count must be positive, got {args.count}")
        if args.render_only:
            if not args.work_dir:
                raise ValueError("--render_only: give --work_dir, the folder that receives the sets")
            for name in names:
                render_set(name, os.path.join(args.work_dir, name), args.count)
                print(f"{os.path.join(args.work_dir, name)}: {args.count} captchas of set {name}, alphabet "
                      f"{SETS[name].charset}", flush=True)
            return 0
        if not os.path.isfile(args.checkpoint_path):
            raise ValueError(f"--checkpoint_path {args.checkpoint_path}: no such file")
        if args.ddddocr_python and not os.access(args.ddddocr_python, os.X_OK):
            raise ValueError(f"--ddddocr_python {args.ddddocr_python}: not an executable")
        work = args.work_dir or tempfile.mkdtemp(prefix="bench_universal_")
        told = "each set's alphabet told to both readers" if args.told_alphabet else "no alphabet told (zero-shot)"
        classes = f"; ours with --read_classes {args.read_classes!r}" if args.read_classes is not None else ""
        print(f"cpu: {cpu_model()}\ncheckpoint: {args.checkpoint_path}\n{args.count} captchas per set; {told}{classes}",
              flush=True)
        print(f"{'set':16} {'ours exact':>10} {'ours folded':>11} {'ddddocr exact':>13} {'ddddocr folded':>14}")
        for name in names:
            samples = render_set(name, os.path.join(work, name), args.count)
            paths, labels = [p for p, _ in samples], [label for _, label in samples]
            started = time.time()
            alphabet = SETS[name].charset if args.told_alphabet else ""
            ours = scores(read_ours(paths, args.checkpoint_path, alphabet, args.read_classes), labels)
            row = {"set": name, "count": len(labels), "told_alphabet": args.told_alphabet,
                   "read_classes": args.read_classes,
                   "ours_exact": ours[0], "ours_folded": ours[1],
                   "ours_s": round(time.time() - started, 1)}
            theirs = ("", "")
            if args.ddddocr_python:
                started = time.time()
                exact, folded = scores(read_ddddocr(paths, args.ddddocr_python, alphabet), labels)
                row.update(ddddocr_exact=exact, ddddocr_folded=folded, ddddocr_s=round(time.time() - started, 1))
                theirs = (f"{exact:.1%}", f"{folded:.1%}")
            print(f"{name:16} {ours[0]:>10.1%} {ours[1]:>11.1%} {theirs[0]:>13} {theirs[1]:>14}", flush=True)
            if args.json_out:
                with open(args.json_out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
        if not args.ddddocr_python:
            print("ddddocr: not run (give --ddddocr_python)")
    except (ValueError, RuntimeError) as err:
        return report_error("bench_universal.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
