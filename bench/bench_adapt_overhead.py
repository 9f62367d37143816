"""Adaptation speed: seconds per step of the real adaptation run against the bare training step of the
same network, in one run.

    python bench/bench_adapt_overhead.py [--networks warpctc,crnn] [--dataset_path FOLDER] [--epochs 3]

The adaptation is ``configs/adapt.yaml``'s (or ``--config_path``'s) on a labelled folder (by default
1,000 captchas of the held-out ``ink`` style, drawn into a temporary folder): each epoch every
labelled image once, augmented anew, plus the captchas the config renders on the fly (none in
adapt.yaml since 2026-12-08; docs/adapting.md's figures ran with ``--synthetic_images 250
--batch_size 64``, the recipe before), trained through
``Model.train`` as train.py does, epoch boundaries included. The bare step is the same training cell
on one fixed in-memory batch (as bench/bench_train_step.py times it), timed before and after the
adaptation so that a change in the machine's load shows. Printed per network: both s/step, the
overhead in % of the bare step, the steps that start an epoch against the others, and the CPU cost
per image of each pipeline stage on one thread (decode, augment, render, transforms). The CPU model
and the load average come first: another job on the cores inflates every number.

Each network is measured in a process of its own: in one process, the crnn measured after the
warpctc ran at 8.1 s/step, against 0.5-0.8 s/step alone.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, Iterator, List

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model, time_steps  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import Config, add_config_arguments, config_from_args, validate  # noqa: E402

DEFAULT_CONFIG = os.path.join(REPO, "configs", "adapt.yaml")
NETWORKS = ("warpctc", "crnn")


def stage_costs(cfg: Config, spec: CaptchaSpec, folder: str, count: int = 100) -> Dict[str, float]:
    """Milliseconds of CPU per image of each pipeline stage, one thread, on ``count`` images of ``folder``."""
    import random

    import mindspore.dataset.transforms as transforms
    import numpy as np
    from PIL import Image

    from src.data.images import load_bgr
    from src.data.labels import list_samples
    from src.dataset import image_transforms
    from src.data.render import Renderer, RenderStyle

    paths = [path for path, _ in list_samples(folder, spec)][:count]
    renderer = Renderer(spec, RenderStyle.from_config(cfg))
    costs = {}
    start = time.process_time()
    images = [load_bgr(path) for path in paths]
    costs["decode a PNG"] = time.process_time() - start
    start = time.process_time()
    for index, image in enumerate(images):
        rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
        renderer.augment(rgb, random.Random(index), (255, 255, 255))
    costs["augment"] = time.process_time() - start
    start = time.process_time()
    for index in range(len(paths)):
        renderer.render_bgr("1234", f"bench-{index}")
    costs["render on the fly"] = time.process_time() - start
    compose = transforms.Compose(image_transforms(spec))
    start = time.process_time()
    for image in images:
        compose(image)
    costs["transforms"] = time.process_time() - start
    return {stage: 1000 * seconds / len(paths) for stage, seconds in costs.items()}


def bare_step(cell, images, labels, steps: int, warmup: int) -> List[float]:
    """Seconds of each of ``steps`` steps of ``cell`` on one in-memory batch (loss read back)."""
    import mindspore as ms

    x, y = ms.Tensor(images), ms.Tensor(labels)
    return time_steps(lambda: float(cell(x, y).asnumpy()), steps, warmup)


def adaptation_steps(cell, dataset, epochs: int) -> List[float]:
    """Time at the end of every step of ``epochs`` epochs of ``Model.train`` over ``dataset`` (non-sink,
    as train.py on CPU), the loss read back at each step."""
    from mindspore.train import Callback, Model

    class Clock(Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_begin(self, run_context):
            self.ends.append(time.perf_counter())

        def on_train_step_end(self, run_context):
            run_context.original_args().net_outputs.asnumpy()
            self.ends.append(time.perf_counter())

    clock = Clock()
    Model(cell).train(epochs, dataset, callbacks=[clock], dataset_sink_mode=False)
    return clock.ends


@contextlib.contextmanager
def sample_reads() -> Iterator[List[float]]:
    """The times at which the pipeline's sources hand over a sample (a folder image or a captcha
    rendered on the fly), while inside."""
    import src.dataset as data

    times: List[float] = []
    originals = {source: source.__getitem__ for source in (data.CaptchaSource, data.SyntheticSource)}

    def timed(read):
        def timed_read(self, index):
            item = read(self, index)
            times.append(time.perf_counter())
            return item
        return timed_read

    for source, read in originals.items():
        source.__getitem__ = timed(read)
    try:
        yield times
    finally:
        for source, read in originals.items():
            source.__getitem__ = read


def measure(cfg: Config, folder: str, args: argparse.Namespace) -> None:
    """Print the bare step, the adaptation step and the overhead of one network."""
    import mindspore as ms

    from src.dataset import create_dataset
    from src.warpctc_for_train import build_train_cell

    spec = CaptchaSpec.from_config(cfg)
    ms.set_seed(cfg.seed)
    dataset = create_dataset(folder, cfg, spec, training=True)
    per_epoch = dataset.get_dataset_size()
    images, labels = next(create_dataset(folder, cfg, spec, training=True).create_tuple_iterator(
        output_numpy=True, num_epochs=1))
    _, cell, _ = build_train_cell(cfg, "CPU", per_epoch)
    before = bare_step(cell, images, labels, args.steps, args.warmup)
    with sample_reads() as reads:
        ends = adaptation_steps(cell, dataset, args.epochs)
    after = bare_step(cell, images, labels, args.steps, 1)
    durations = [b - a for a, b in zip(ends, ends[1:])]
    # The first steps compile the graph and fill the pipeline's queues. The pipeline runs some 20
    # batches ahead, so the last steps of the run train on batches made before them, for free. The
    # steps in between pay for making one batch each, as every step of a long run does.
    timed = {i: d for i, d in enumerate(durations) if i >= args.warmup and ends[i + 1] <= reads[-1]}
    ready = [d for i, d in enumerate(durations) if ends[i + 1] > reads[-1]]
    if not timed:
        raise ValueError(f"--epochs {args.epochs}: the pipeline had made every batch before step "
                         f"{args.warmup + 1}; give more epochs")
    adapt = statistics.mean(timed.values())
    bare = statistics.median(before + after)
    print(f"{cfg.network}: bare step {bare:.3f} s/step (median of {len(before)} before, "
          f"{statistics.median(before):.3f}, and {len(after)} after, {statistics.median(after):.3f})")
    made_before = f"; the last {len(ready)}, made before them: {statistics.mean(ready):.3f} s/step" if ready else ""
    print(f"{cfg.network}: adaptation {adapt:.3f} s/step (mean of steps {min(timed) + 1}-{max(timed) + 1} of "
          f"{args.epochs} epochs of {per_epoch} steps at batch {cfg.batch_size}, while the pipeline was making "
          f"batches{made_before})")
    firsts = [d for i, d in timed.items() if i % per_epoch == 0]
    if firsts:
        print(f"{cfg.network}: the first step of an epoch: {statistics.mean(firsts):.3f} s (mean of {len(firsts)}); "
              f"the other steps: median {statistics.median(d for i, d in timed.items() if i % per_epoch):.3f} s")
    print(f"{cfg.network}: overhead {100 * (adapt / bare - 1):+.1f} % of the bare step", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", default=",".join(NETWORKS),
                        help="comma-separated networks to measure (default: %(default)s)")
    parser.add_argument("--dataset_path", default=None,
                        help="labelled folder to adapt on (default: 1,000 captchas of the held-out ink style)")
    parser.add_argument("--epochs", type=int, default=3, help="adaptation epochs timed per network (default: 3)")
    parser.add_argument("--steps", type=int, default=8, help="bare steps timed before and after (default: 8)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    add_config_arguments(parser, [name for name in Config.__dataclass_fields__ if name != "network"])
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    try:
        if args.config_path is None:
            args.config_path = DEFAULT_CONFIG
        cfg = config_from_args(args)
        networks = [name.strip() for name in args.networks.split(",")]
        unknown = [name for name in networks if name not in NETWORKS]
        if unknown or not networks:
            raise ValueError(f"--networks: {','.join(unknown) or 'none'} not among {', '.join(NETWORKS)}")
        if args.epochs < 2 or args.steps < 1 or args.warmup < 1:
            raise ValueError("--epochs must be at least 2, --steps and --warmup at least 1")
        configs = [validate(dataclasses.replace(cfg, network=name)) for name in networks]
    except ValueError as err:
        return report_error("bench_adapt_overhead.py", err)
    if len(networks) > 1:
        # argparse keeps the last --networks, so the appended one overrides the user's
        return max(subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--networks", name]).returncode
                   for name in networks)

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    print(f"machine: {cpu_model()}; load average {' '.join(f'{v:.2f}' for v in os.getloadavg())} "
          "(over 1, 5, 15 min, before this run)", flush=True)
    with tempfile.TemporaryDirectory(prefix="adapt_overhead_") as scratch:
        folder = args.dataset_path
        if folder is None:
            from research.heldout_styles import render_heldout

            folder = os.path.join(scratch, "ink")
            render_heldout(folder, "ink", CaptchaSpec.from_config(cfg), 1000, seed=0)
        try:
            costs = stage_costs(cfg, CaptchaSpec.from_config(cfg), folder)
            print("pipeline CPU per image, one thread: " + ", ".join(f"{k} {v:.2f} ms" for k, v in costs.items()),
                  flush=True)
            for one in configs:
                measure(one, folder, args)
        except ValueError as err:
            return report_error("bench_adapt_overhead.py", err)
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
