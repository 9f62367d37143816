"""Training throughput on captchas rendered on the fly vs read from PNG files.

    python bench/bench_synthetic.py [--train_steps 20] [--rounds 1] [--batch_size 64] [--hidden_size 512]

Times real training steps (``Model.train`` over the cell train.py builds, every loss read
back, after 3 untimed warm-up steps) fed by: ``png``, train.py's pipeline over a folder of PNGs
(rendered first, into a temporary folder, by process_data.py); ``fly``, train.py's on-the-fly
pipeline (``--synthetic_images``: the render runs in the dataset's worker thread);
``fly_process``, the same source with the render in a worker process
(``python_multiprocessing=True``). The variants run in turn, ``--rounds`` times, so that a
drift of the machine's speed hits them alike. Prints the CPU, each variant's images/s and
median s/step, and the throughput of each on-the-fly variant relative to ``png``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402
from src.data.render import STYLE_FIELDS  # noqa: E402

# What the timings depend on: the captcha and its style (render cost), the sizes, the workers.
BENCH_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "batch_size", "hidden_size",
                "num_parallel_workers", "normalization") + STYLE_FIELDS
WARMUP = 3
VARIANTS = ("png", "fly", "fly_process")


def make_dataset(variant: str, cfg, spec: CaptchaSpec, png_dir: str, images: int):
    """The training pipeline of one variant, ``images`` images long (one epoch)."""
    from src.dataset import create_dataset

    if variant == "png":
        return create_dataset(png_dir, cfg, spec)
    fly = dataclasses.replace(cfg, synthetic_images=images)
    if variant == "fly":
        return create_dataset(None, fly, spec)
    import mindspore.dataset as ds

    from src.config import num_workers
    from src.dataset import StreamSampler, SyntheticSource, image_transforms
    from src.data.render import Renderer, RenderStyle

    # train.py's on-the-fly pipeline, but the source runs in worker processes.
    workers = num_workers(cfg, "CPU", training=True)
    source = SyntheticSource(Renderer(spec, RenderStyle.from_config(cfg)), cfg.seed, images)
    dataset = ds.GeneratorDataset(source, column_names=["image", "label"], num_parallel_workers=workers,
                                  python_multiprocessing=True, sampler=StreamSampler(images))
    dataset = dataset.map(operations=image_transforms(spec), input_columns="image", num_parallel_workers=workers)
    return dataset.batch(cfg.batch_size, drop_remainder=True)


def time_training(dataset, cfg, steps: int):
    """``(images/s over the timed steps, median s/step)`` of training on ``dataset``."""
    import mindspore as ms
    from mindspore.train import Callback, LossMonitor, Model

    from src.warpctc_for_train import build_train_cell

    ms.set_seed(1)
    _, cell, _ = build_train_cell(cfg, "CPU", steps_per_epoch=steps + WARMUP)

    class Clock(Callback):
        def __init__(self):
            self.ends = []

        def on_train_step_end(self, run_context):
            run_context.original_args().net_outputs.asnumpy()
            self.ends.append(time.perf_counter())

    clock = Clock()
    silent = LossMonitor(per_print_times=10 ** 9)   # train.py's callback cost, minus printing
    Model(cell).train(1, dataset, callbacks=[clock, silent], dataset_sink_mode=False)
    timed = clock.ends[WARMUP - 1:]
    per_step = [b - a for a, b in zip(timed, timed[1:])]
    return steps * cfg.batch_size / (timed[-1] - timed[0]), statistics.median(per_step)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps per variant and round")
    parser.add_argument("--rounds", type=int, default=1, help="times each variant runs, in turn (default: 1)")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help=f"comma-separated, from {', '.join(VARIANTS)} (default: all)")
    add_config_arguments(parser, BENCH_FIELDS)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if not variants or set(variants) - set(VARIANTS):
            raise ValueError(f"--variants: expected some of {', '.join(VARIANTS)}, got {args.variants!r}")
        if args.train_steps <= 0 or args.rounds <= 0:
            raise ValueError("--train_steps and --rounds must be positive")
    except ValueError as err:
        return report_error("bench_synthetic.py", err)
    spec = CaptchaSpec.from_config(cfg)

    import mindspore as ms

    import process_data
    from src.config import num_workers
    from src.data.render import RenderStyle

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    images = (args.train_steps + WARMUP) * cfg.batch_size
    style = RenderStyle.from_config(cfg)
    print(f"cpu: {cpu_model()}")
    print(f"batch {cfg.batch_size}, hidden {cfg.hidden_size}, {args.train_steps} timed steps x {args.rounds} "
          f"round(s), {num_workers(cfg, 'CPU', training=True)} dataset worker(s); captchas {spec.describe()}, "
          f"{style.describe()}", flush=True)
    results = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="warpctc_bench_") as scratch:
        png_dir = os.path.join(scratch, "train")
        if "png" in variants:
            # The same captchas as the default on-the-fly style would draw, as files.
            process_data.render_split(png_dir, images, spec=spec, style=style, workers=os.cpu_count() or 1,
                                      progress=False)
        for _ in range(args.rounds):
            for variant in variants:
                rate, median = time_training(make_dataset(variant, cfg, spec, png_dir, images), cfg,
                                             args.train_steps)
                results[variant].append((rate, median))
                print(f"  {variant:<12} {rate:6.1f} images/s, median {median:.3f} s/step", flush=True)
    summary = {v: statistics.median(r for r, _ in runs) for v, runs in results.items()}
    for variant, rate in summary.items():
        line = f"{variant:<12} {rate:6.1f} images/s"
        if variant != "png" and "png" in summary:
            line += f" = {rate / summary['png']:.3f} x png ({1 - rate / summary['png']:+.1%} lost)"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
