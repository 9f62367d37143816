"""Input pipeline, end-to-end training, eval, predict and rendering throughput (images/s).

    python bench/bench_pipeline.py [--data data] [--train_steps 20] [--images 2048]

(a) the input pipeline alone from PNGs on disk, default worker count;
(b) real training from PNGs vs the same training cell fed an in-memory batch, both through
    ``Model.train`` with train.py's callbacks: the share of throughput lost to data loading;
(c) eval.py and predict.py throughput, and process_data.py rendering throughput.
Needs the rendered dataset (``bash scripts/run_process_data.sh``).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def subset_folder(src: str, count: int) -> str:
    """A temporary folder of symlinks to the first ``count`` PNGs of ``src``."""
    out = tempfile.mkdtemp(prefix="warpctc_bench_")
    for name in sorted(os.listdir(src))[:count]:
        os.symlink(os.path.join(src, name), os.path.join(out, name))
    return out


def pipeline_only(train_dir: str, batch_size: int, batches: int) -> float:
    from src.dataset import create_dataset

    dataset = create_dataset(train_dir, batch_size=batch_size)
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(iterator)                                  # start-up (file checks, threads) not timed
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.perf_counter() - start)


def training_throughput(train_dir: str, cfg, steps: int, synthetic: bool) -> float:
    """Images/s of ``steps`` training steps via ``Model.train`` (after 3 untimed warm-up steps)."""
    import mindspore as ms
    import mindspore.dataset as ds
    from mindspore.train import Callback, LossMonitor, Model

    from src.config import num_workers
    from src.dataset import create_dataset
    from src.warpctc_for_train import build_train_cell

    ms.set_seed(1)
    _, cell, _ = build_train_cell(cfg, "CPU", steps_per_epoch=1000)
    warmup = 3
    if synthetic:
        image, label = next(create_dataset(train_dir, batch_size=cfg.batch_size)
                            .create_tuple_iterator(output_numpy=True, num_epochs=1))
        # The same Python generator path as the real pipeline, minus the PNG work.
        dataset = ds.GeneratorDataset(lambda: ((image, label) for _ in range(steps + warmup)),
                                      column_names=["image", "label"])
    else:
        # The worker count train.py uses (src.config.num_workers).
        dataset = create_dataset(train_dir, batch_size=cfg.batch_size,
                                 num_parallel_workers=num_workers(cfg, "CPU", training=True)).take(steps + warmup)

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


def render_throughput(count: int) -> float:
    import process_data

    out = os.path.join(tempfile.mkdtemp(prefix="warpctc_render_"), "train")
    start = time.perf_counter()
    process_data.render_split(out, count, workers=os.cpu_count() or 1, progress=False)
    return count / (time.perf_counter() - start)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(REPO, "data"), help="folder with train/ and test/")
    parser.add_argument("--train_steps", type=int, default=20, help="timed training steps per variant")
    parser.add_argument("--images", type=int, default=2048, help="images for eval/predict/render timing")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--hidden_size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0, help="dataset workers for (b); 0 = train.py's default")
    parser.add_argument("--only", choices=("a", "b", "c"), default=None, help="run one part only")
    args = parser.parse_args(argv)

    import mindspore as ms

    from src.config import Config

    train_dir, test_dir = os.path.join(args.data, "train"), os.path.join(args.data, "test")
    for folder in (train_dir, test_dir):
        if not os.path.isdir(folder):
            print(f"bench_pipeline.py: error: {folder}: no such folder (bash scripts/run_process_data.sh)",
                  file=sys.stderr)
            return 2
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    cfg = Config(batch_size=args.batch_size, hidden_size=args.hidden_size, num_parallel_workers=args.workers)
    print(f"machine: {os.cpu_count()} CPU(s); batch {cfg.batch_size}, hidden {cfg.hidden_size}")

    if args.only in (None, "a"):
        rate = pipeline_only(train_dir, cfg.batch_size, batches=50)
        print(f"(a) input pipeline alone: {rate:.0f} images/s")
    if args.only == "a":
        return 0

    real = training_throughput(train_dir, cfg, args.train_steps, synthetic=False)
    synthetic = training_throughput(train_dir, cfg, args.train_steps, synthetic=True)
    print(f"(b) training from PNGs: {real:.1f} images/s; from an in-memory batch: {synthetic:.1f} images/s; "
          f"lost to data loading: {1 - real / synthetic:+.1%}")
    if args.only == "b":
        return 0

    from src.warpctc import create_warpctc

    ckpt = os.path.join(tempfile.mkdtemp(prefix="warpctc_ckpt_"), "bench.ckpt")
    ms.save_checkpoint(create_warpctc(cfg), ckpt)
    subset = subset_folder(test_dir, args.images)
    evaluated = eval_throughput(subset, cfg.batch_size, ckpt)
    predicted = predict_throughput(subset, cfg, ckpt)
    train_rate = real
    print(f"(c) eval: {evaluated:.0f} images/s ({evaluated / train_rate:.1f}x training); "
          f"predict: {predicted:.0f} images/s")
    print(f"    process_data.py rendering: {render_throughput(args.images):.0f} images/s "
          f"({os.cpu_count()} workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
