"""Input pipeline, end-to-end training, eval, predict and rendering throughput (images/s).

    python bench/bench_pipeline.py [--data data] [--train_steps 20] [--images 2048] [--charset ...]

(a) the input pipeline alone from PNGs on disk, default worker count;
(b) real training from PNGs vs the same training cell fed an in-memory batch, both through
    ``Model.train`` with train.py's callbacks: the share of throughput lost to data loading;
(c) eval.py and predict.py throughput, and process_data.py rendering throughput.
Needs the rendered dataset (``bash scripts/run_process_data.sh``, with the same ``--charset``).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import add_config_arguments, config_from_args  # noqa: E402

# What the timings depend on: the captcha (rendering, time steps, classes) and the sizes.
BENCH_FIELDS = ("charset", "max_captcha_digits", "captcha_width", "captcha_height", "batch_size", "hidden_size")


def subset_folder(src: str, count: int, out: str) -> str:
    """``out``, a new folder of symlinks to the first ``count`` PNGs of ``src``."""
    os.makedirs(out)
    for name in sorted(n for n in os.listdir(src) if n.endswith(".png"))[:count]:
        os.symlink(os.path.join(src, name), os.path.join(out, name))
    return out


def pipeline_only(train_dir: str, cfg, spec: CaptchaSpec, batches: int) -> float:
    from src.dataset import create_dataset

    # In order with the CPU-count workers eval uses: the pipeline's best rate on this machine.
    dataset = create_dataset(train_dir, cfg, spec, training=False)
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(iterator)                                  # start-up (file checks, threads) not timed
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * cfg.batch_size / (time.perf_counter() - start)


def training_throughput(train_dir: str, cfg, spec: CaptchaSpec, steps: int, synthetic: bool) -> float:
    """Images/s of ``steps`` training steps via ``Model.train`` (after 3 untimed warm-up steps)."""
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.train import Callback, LossMonitor, Model

    from src.dataset import create_dataset
    from src.warpctc_for_train import build_train_cell

    ms.set_seed(1)
    _, cell, _ = build_train_cell(cfg, "CPU", steps_per_epoch=1000)
    warmup = 3
    if synthetic:
        image, label = next(create_dataset(train_dir, cfg, spec).create_tuple_iterator(output_numpy=True,
                                                                                          num_epochs=1))
        # The same Python generator path as the real pipeline, minus the PNG work.
        dataset = ds.GeneratorDataset(lambda: ((image, label) for _ in range(steps + warmup)),
                                      column_names=["image", "label"])
    else:
        # Exactly train.py's pipeline, worker count included (src.config.num_workers).
        dataset = create_dataset(train_dir, cfg, spec).take(steps + warmup)

    class Clock(Callback):
        def on_train_step_end(self, run_context):
            cb = run_context.original_args()
            cb.net_outputs.asnumpy()
            if cb.cur_step_num == warmup:
                self.t_start = time.perf_counter()
            self.t_end = time.perf_counter()

    clock = Clock()
    silent = LossMonitor(per_print_times=10 ** 9)   # the same callback cost as train.py, minus printing
    Model(cell).train(1, dataset, callbacks=[clock, silent], dataset_sink_mode=False)
    return steps * cfg.batch_size / (clock.t_end - clock.t_start)


def eval_throughput(test_dir: str, batch_size: int, ckpt: str) -> float:
    import eval as eval_script

    args = eval_script.build_parser().parse_args(["--dataset_path", test_dir, "--checkpoint_path", ckpt,
                                                  "--batch_size", str(batch_size)])
    out = eval_script.evaluate(args)
    return out["images"] / out["seconds"]


def predict_throughput(test_dir: str, cfg, ckpt: str) -> float:
    import predict

    paths = predict.collect_images([test_dir])
    start = time.perf_counter()
    predict.predict(paths, ckpt, cfg)
    return len(paths) / (time.perf_counter() - start)


def render_throughput(spec: CaptchaSpec, count: int, out: str) -> float:
    import process_data

    start = time.perf_counter()
    process_data.render_split(out, count, spec=spec, workers=os.cpu_count() or 1, progress=False)
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "data"), help="folder with train/ and test/")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--images", type=int, default=2048, help="images for eval/predict/render timing")
    parser.add_argument("--workers", type=int, default=0, help="dataset workers for (b); 0 = train.py's default")
    parser.add_argument("--only", choices=("a", "b", "c"), default=None, help="run one part only")
    add_config_arguments(parser, BENCH_FIELDS)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        train_dir, test_dir = os.path.join(args.data, "train"), os.path.join(args.data, "test")
        for folder in (train_dir, test_dir):
            if not os.path.isdir(folder):
                raise ValueError(f"{folder}: no such folder (bash scripts/run_process_data.sh)")
    except ValueError as err:
        return report_error("bench_pipeline.py", err)
    spec = CaptchaSpec.from_config(cfg)

    import mindspore as ms

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    print(f"machine: {os.cpu_count()} CPU(s); batch {cfg.batch_size}, hidden {cfg.hidden_size}; captchas "
          f"{spec.describe()}")

    if args.only in (None, "a"):
        rate = pipeline_only(train_dir, cfg, spec, batches=50)
        print(f"(a) input pipeline alone: {rate:.0f} images/s")
    if args.only == "a":
        return 0

    train_cfg = dataclasses.replace(cfg, num_parallel_workers=args.workers)
    real = training_throughput(train_dir, train_cfg, spec, args.train_steps, synthetic=False)
    synthetic = training_throughput(train_dir, train_cfg, spec, args.train_steps, synthetic=True)
    print(f"(b) training from PNGs: {real:.1f} images/s; from an in-memory batch: {synthetic:.1f} images/s; "
          f"lost to data loading: {1 - real / synthetic:+.1%}")
    if args.only == "b":
        return 0

    from src.checkpoint.model import model_record
    from src.models import create_network

    with tempfile.TemporaryDirectory(prefix="warpctc_bench_") as scratch:
        ckpt = os.path.join(scratch, "bench.ckpt")
        # With its spec, as train.py saves: eval and predict read the model from the file.
        net = create_network(cfg, spec=spec)
        ms.save_checkpoint(net, ckpt, append_dict=model_record(spec, net.architecture))
        subset = subset_folder(test_dir, args.images, os.path.join(scratch, "subset"))
        evaluated = eval_throughput(subset, cfg.batch_size, ckpt)
        predicted = predict_throughput(subset, cfg, ckpt)
        print(f"(c) eval: {evaluated:.0f} images/s ({evaluated / real:.1f}x training); "
              f"predict: {predicted:.0f} images/s")
        rendered = render_throughput(spec, args.images, os.path.join(scratch, "render", "train"))
        print(f"    process_data.py rendering: {rendered:.0f} images/s ({os.cpu_count()} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
