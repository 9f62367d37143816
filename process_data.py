"""Render the captcha dataset: ``<out>/train`` and ``<out>/test`` folders of PNG files.

Each file is ``<zero-padded index>-<digits>.png``; the label is the part after the first
``-``. The same ``--seed`` gives the same labels and byte-identical images whatever the
number of worker processes. A split is rendered into a hidden staging folder and swapped
in only when complete, so a re-run never leaves old and new images mixed.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import re
import shutil
import sys
import time
from typing import Iterable, List, Tuple

import captcha.image
from captcha.image import ImageCaptcha

from src.cli import report_error

FILE_RE = re.compile(r"^\d+-\d+\.png$")


class _SeededSecrets:
    """Stand-in for the ``secrets`` module that ``captcha`` draws from, driven by a seeded RNG.

    ``captcha`` 0.7 uses ``secrets`` (unseedable) for every random choice; swapping it for a
    seeded generator is what makes images reproducible byte for byte.
    """

    def __init__(self, rng: random.Random):
        self._rng = rng

    def randbelow(self, n: int) -> int:
        return self._rng.randrange(n)

    def randbits(self, k: int) -> int:
        return self._rng.getrandbits(k)

    def choice(self, seq):
        return self._rng.choice(seq)


def sample_label(rng: random.Random, max_digits: int) -> str:
    """A label of 1..max_digits digits, length and digits uniform."""
    length = rng.randint(1, max_digits)
    return "".join(str(rng.randrange(10)) for _ in range(length))


def plan_split(count: int, max_digits: int, seed: int, split: str) -> List[Tuple[str, str]]:
    """File names and labels of one split, a pure function of (count, max_digits, seed, split)."""
    rng = random.Random(f"warpctc-labels-{seed}-{split}")
    width = len(str(count))
    plan = []
    for index in range(count):
        label = sample_label(rng, max_digits)
        plan.append((f"{index:0{width}d}-{label}.png", label))
    return plan


_GENERATOR: ImageCaptcha | None = None


def _render_one(job: Tuple[str, str, str, int, int]) -> None:
    path, label, image_seed, width, height = job
    global _GENERATOR
    if _GENERATOR is None or (_GENERATOR._width, _GENERATOR._height) != (width, height):
        _GENERATOR = ImageCaptcha(width=width, height=height)
    saved = captcha.image.secrets
    captcha.image.secrets = _SeededSecrets(random.Random(image_seed))
    try:
        image = _GENERATOR.generate_image(label)
    finally:
        captcha.image.secrets = saved
    image.save(path, format="PNG")


def render_split(out_dir: str, count: int, *, width: int = 160, height: int = 64, max_digits: int = 4,
                 seed: int = 1, split: str = "train", workers: int = 1, progress: bool = True) -> List[str]:
    """Render ``count`` captchas into ``out_dir`` (replaced as a whole) and return the file names."""
    if count <= 0:
        raise ValueError(f"--{split}_count must be positive, got {count}")
    out_dir = os.path.abspath(out_dir)
    if os.path.exists(out_dir):
        if not os.path.isdir(out_dir):
            raise ValueError(f"{out_dir}: exists and is not a folder")
        foreign = [name for name in os.listdir(out_dir) if not FILE_RE.match(name)]
        if foreign:
            raise ValueError(f"{out_dir}: holds files that process_data.py did not write "
                             f"(e.g. {sorted(foreign)[0]}); refusing to replace it, choose another --output_dir")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(out_dir)}.partial-{os.getpid()}")
    os.makedirs(staging)
    plan = plan_split(count, max_digits, seed, split)
    jobs = [(os.path.join(staging, name), label, f"warpctc-image-{seed}-{split}-{i}", width, height)
            for i, (name, label) in enumerate(plan)]
    try:
        _run_jobs(jobs, workers, split, progress)
        if os.path.exists(out_dir):
            retired = os.path.join(parent, f".{os.path.basename(out_dir)}.old-{os.getpid()}")
            os.rename(out_dir, retired)
            os.rename(staging, out_dir)
            shutil.rmtree(retired)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [name for name, _ in plan]


def _run_jobs(jobs: List[tuple], workers: int, split: str, progress: bool) -> None:
    total = len(jobs)
    start = time.time()
    step = max(1, total // 20)

    def report(done: int) -> None:
        if progress and (done % step == 0 or done == total):
            rate = done / max(time.time() - start, 1e-9)
            print(f"[{split}] {done}/{total} images ({rate:.0f} images/s)", file=sys.stderr, flush=True)

    if workers <= 1:
        for done, job in enumerate(jobs, 1):
            _render_one(job)
            report(done)
        return
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with ctx.Pool(workers) as pool:
        for done, _ in enumerate(pool.imap_unordered(_render_one, jobs, chunksize=64), 1):
            report(done)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Render the WarpCTC captcha dataset (<output_dir>/train and <output_dir>/test).")
    parser.add_argument("--output_dir", default="data", help="folder that receives train/ and test/ (default: data)")
    parser.add_argument("--train_count", type=int, default=50000, help="number of training images (default: 50000)")
    parser.add_argument("--test_count", type=int, default=10000, help="number of test images (default: 10000)")
    parser.add_argument("--splits", default="train,test",
                        help="comma-separated splits to render: train, test or both (default: train,test)")
    parser.add_argument("--captcha_width", type=int, default=160, help="image width in pixels (default: 160)")
    parser.add_argument("--captcha_height", type=int, default=64, help="image height in pixels (default: 64)")
    parser.add_argument("--max_captcha_digits", type=int, default=4, help="labels have 1..N digits (default: 4)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: the CPU count, here %(default)s)")
    parser.add_argument("--seed", type=int, default=1, help="seed: the same seed gives identical files (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="do not print progress")
    return parser


def parse_splits(text: str) -> List[str]:
    splits = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "test")]
    if bad or not splits:
        raise ValueError(f"--splits: expected train and/or test, got {text!r}")
    return splits


def main(argv: Iterable[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        for name in ("captcha_width", "captcha_height", "max_captcha_digits", "workers"):
            if getattr(args, name) <= 0:
                raise ValueError(f"--{name} must be positive, got {getattr(args, name)}")
        for split in parse_splits(args.splits):
            count = args.train_count if split == "train" else args.test_count
            start = time.time()
            out = os.path.join(args.output_dir, split)
            render_split(out, count, width=args.captcha_width, height=args.captcha_height,
                         max_digits=args.max_captcha_digits, seed=args.seed, split=split,
                         workers=args.workers, progress=not args.quiet)
            elapsed = time.time() - start
            print(f"{split}: {count} images in {os.path.abspath(out)} "
                  f"({elapsed:.1f} s, {count / max(elapsed, 1e-9):.0f} images/s)")
    except ValueError as err:
        return report_error("process_data.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
