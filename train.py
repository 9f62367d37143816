"""Train WarpCTC: ``python train.py --dataset_path data/train [--platform CPU] [options]``."""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence, Tuple

from src.cli import report_error
from src.config import Config, add_config_arguments, config_from_args, num_workers
from src.runtime import PLATFORMS, RunInfo, set_up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the WarpCTC captcha recogniser.")
    parser.add_argument("--dataset_path", required=True, help="folder of training PNGs (<index>-<digits>.png)")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--run_distribute", action="store_true",
                        help="data-parallel training; the process must be started by a launcher "
                             "(scripts/run_distribute_train*.sh)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU; default: $DEVICE_ID or 0)")
    parser.add_argument("--resume_checkpoint", default=None,
                        help="continue a training from this checkpoint, or from the furthest one in this "
                             "folder: weights, optimizer momentum and the step/epoch position (the "
                             "learning-rate schedule and the data order continue where they stopped)")
    parser.add_argument("--init_checkpoint", default=None,
                        help="start a new training from these network weights (e.g. pretrained/warpctc.ckpt, "
                             "to fine-tune): the optimizer state, the step and the learning-rate schedule "
                             "start from zero; cannot be combined with --resume_checkpoint")
    parser.add_argument("--eval_dataset_path", default=None,
                        help="held-out PNG folder for a learning curve written during training")
    parser.add_argument("--eval_every", type=int, default=200, help="steps between learning-curve points (default: 200)")
    parser.add_argument("--eval_images", type=int, default=2000,
                        help="held-out images per learning-curve point (default: 2000; 0 = all)")
    parser.add_argument("--curve_csv", default=None,
                        help="learning-curve CSV (default: <save_checkpoint_path>/learning_curve.csv)")
    parser.add_argument("--dataset_sink_mode", choices=("auto", "on", "off"), default="auto",
                        help="feed data through the device queue; auto = on for Ascend/GPU, off for CPU")
    return add_config_arguments(parser)


def _checkpoint_dir(cfg: Config, info: RunInfo) -> str:
    # Every rank writes its own folder: ranks never race on one file name, and each rank's
    # copy can be checked against the others (they must be identical after all-reduce).
    if info.distributed:
        return os.path.join(cfg.save_checkpoint_path, f"rank_{info.rank}")
    return cfg.save_checkpoint_path


def build_training(cfg: Config, info: RunInfo, dataset_path: str):
    """This rank's dataset shard plus the network, schedule and one-step training cell."""
    from src.dataset import create_dataset
    from src.warpctc_for_train import build_train_cell

    dataset = create_dataset(dataset_path, batch_size=cfg.batch_size, num_shards=info.group_size,
                             shard_id=info.rank, device_target=info.platform,
                             max_captcha_digits=cfg.max_captcha_digits, captcha_width=cfg.captcha_width,
                             captcha_height=cfg.captcha_height, seed=cfg.seed,
                             num_parallel_workers=num_workers(cfg, info.platform, training=True))
    steps_per_epoch = dataset.get_dataset_size()
    net, train_cell, lr = build_train_cell(cfg, info.platform, steps_per_epoch, info.group_size)
    return dataset, net, train_cell, steps_per_epoch, lr


def restore(train_cell, path: str) -> Tuple[str, int]:
    """Load weights and optimizer state; return the file used and the global step it was taken at."""
    from src.checkpoint import latest_checkpoint, load_into

    if os.path.isdir(path):
        path = latest_checkpoint(path)
    # The learning-rate table and the momentum factor come from the configuration, not the file.
    params = load_into(train_cell, path, ignore=("learning_rate", "momentum"))
    return path, int(params["global_step"].asnumpy().reshape(-1)[0])


def learning_curve(args: argparse.Namespace, cfg: Config, info: RunInfo, net, lr, start_step: int):
    """The LearningCurve callback with its held-out batches loaded once, in memory."""
    import mindspore as ms

    from src.callbacks import LearningCurve
    from src.dataset import create_dataset

    if args.eval_every <= 0 or args.eval_images < 0:
        raise ValueError("--eval_every must be positive and --eval_images >= 0")
    dataset = create_dataset(args.eval_dataset_path, batch_size=cfg.batch_size, device_target=info.platform,
                             max_captcha_digits=cfg.max_captcha_digits, captcha_width=cfg.captcha_width,
                             captcha_height=cfg.captcha_height, shuffle=False, drop_remainder=False,
                             num_parallel_workers=num_workers(cfg))
    batches, count = [], 0
    for image, label in dataset.create_tuple_iterator(output_numpy=True):
        if args.eval_images:
            image, label = image[: args.eval_images - count], label[: args.eval_images - count]
        batches.append((ms.Tensor(image), label))
        count += len(label)
        if args.eval_images and count >= args.eval_images:
            break
    csv_path = args.curve_csv or os.path.join(_checkpoint_dir(cfg, info), "learning_curve.csv")
    os.makedirs(os.path.dirname(os.path.abspath(csv_path)), exist_ok=True)
    print(f"learning curve: {count} images of {args.eval_dataset_path} every {args.eval_every} steps -> {csv_path}",
          flush=True)
    return LearningCurve(net, batches, args.eval_every, csv_path, lr, start_step)


def make_callbacks(cfg: Config, info: RunInfo, steps_per_epoch: int, start_step: int, total_steps: int) -> List:
    from mindspore.train import CheckpointConfig, LossMonitor, TimeMonitor

    from src.callbacks import ResumePosition, StepCheckpoint, StopAtStep

    callbacks = [ResumePosition(start_step), LossMonitor(per_print_times=1), TimeMonitor(data_size=steps_per_epoch)]
    if total_steps % steps_per_epoch:
        callbacks.append(StopAtStep(total_steps))
    if cfg.save_checkpoint:
        ckpt_config = CheckpointConfig(save_checkpoint_steps=cfg.save_checkpoint_steps,
                                       keep_checkpoint_max=cfg.keep_checkpoint_max,
                                       crc_check=True, append_info=["epoch_num", "step_num"])
        callbacks.append(StepCheckpoint(start_step, prefix="warpctc", directory=_checkpoint_dir(cfg, info),
                                        config=ckpt_config))
    return callbacks


def run(args: argparse.Namespace, cfg: Config) -> int:
    import mindspore as ms
    from mindspore.train import Model

    info = set_up(args.platform, args.run_distribute, args.device_id)
    ms.set_seed(cfg.seed)
    dataset, net, train_cell, steps_per_epoch, lr = build_training(cfg, info, args.dataset_path)
    total_steps = len(lr)                                   # train_steps, or epoch_size whole epochs
    epochs = -(-total_steps // steps_per_epoch)
    sink = args.dataset_sink_mode == "on" or (args.dataset_sink_mode == "auto" and info.platform != "CPU")
    if sink and total_steps % steps_per_epoch:
        # A sunk epoch runs on the device in one go; it cannot stop at a step inside it.
        raise ValueError(f"--train_steps {total_steps} must be a multiple of the {steps_per_epoch} steps per epoch "
                         "with dataset sink mode (or use --dataset_sink_mode off)")
    start_step = 0
    if args.init_checkpoint:
        from src.checkpoint import load_into

        load_into(net, args.init_checkpoint)
        print(f"network weights from {args.init_checkpoint}; optimizer and schedule start at step 0", flush=True)
    if args.resume_checkpoint:
        resume_path, start_step = restore(train_cell, args.resume_checkpoint)
        if start_step >= total_steps:
            print(f"checkpoint {resume_path} is at step {start_step}: the {total_steps} steps of this run "
                  f"are already done; nothing to train")
            return 0
        # MindSpore's failover support: the pipeline restarts at exactly this global step
        # (same epoch, same shuffle, the batches already trained on are skipped).
        dataset.set_init_step(start_step)
        print(f"resuming from {resume_path} at step {start_step} "
              f"(epoch {start_step // steps_per_epoch + 1}, step {start_step % steps_per_epoch + 1} of "
              f"{steps_per_epoch})", flush=True)
    print(f"rank {info.rank}/{info.group_size} on {info.platform}: {steps_per_epoch} steps/epoch x "
          f"{epochs} epochs = {total_steps} steps, batch {cfg.batch_size}, lr {cfg.learning_rate * info.group_size:g}",
          flush=True)
    callbacks = make_callbacks(cfg, info, steps_per_epoch, start_step, total_steps)
    if args.eval_dataset_path and info.rank == 0:
        callbacks.insert(1, learning_curve(args, cfg, info, net, lr, start_step))
    model = Model(train_cell)
    start = time.time()
    model.train(epochs, dataset, callbacks=callbacks,
                dataset_sink_mode=sink, initial_epoch=start_step // steps_per_epoch)
    print(f"training finished in {time.time() - start:.1f} s; checkpoints in "
          f"{os.path.abspath(_checkpoint_dir(cfg, info))}", flush=True)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
        if args.init_checkpoint and args.resume_checkpoint:
            raise ValueError("--init_checkpoint starts a new training and --resume_checkpoint continues one: "
                             "give only one of them")
        return run(args, cfg)
    except ValueError as err:
        return report_error("train.py", err)


if __name__ == "__main__":
    sys.exit(main())
