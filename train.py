"""Train WarpCTC: ``python train.py --dataset_path data/train [--platform CPU] [options]``, or on captchas
rendered on the fly: ``python train.py --synthetic_images 50000 [options]``, or both mixed."""
from __future__ import annotations

if __name__ == "__main__":
    # Before any import that may start a thread (numpy's OpenBLAS does): see src/run/interrupt.py.
    from src.run.interrupt import block_exit_signals

    block_exit_signals()

import argparse
import contextlib
import os
import shlex
import signal
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from src.cli import report_error, stdout_error
from src.captcha_spec import CaptchaSpec
from src.config import Config, add_config_arguments, config_from_args, explicit_overrides, validate
from src.run.runtime import PLATFORMS, RunInfo, set_up


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train the WarpCTC captcha recogniser.")
    parser.add_argument("--dataset_path", default=None,
                        help="labelled folder: <index>-<label>.png files, or images plus labels.tsv (required "
                             "unless --synthetic_images renders the captchas on the fly; with both, each epoch "
                             "mixes the folder and that many rendered captchas)")
    parser.add_argument("--platform", default="CPU", choices=PLATFORMS, help="device to run on (default: CPU)")
    parser.add_argument("--run_distribute", action="store_true",
                        help="data-parallel training; the process must be started by a launcher "
                             "(scripts/run_distribute_train*.sh)")
    parser.add_argument("--device_id", type=int, default=None, help="device index (Ascend/GPU; default: $DEVICE_ID or 0)")
    parser.add_argument("--resume_checkpoint", default=None,
                        help="continue a training from this checkpoint, or from the furthest one in this "
                             "folder that fits this run's settings (a folder holding checkpoints of two "
                             "trainings needs the file): weights, optimizer momentum and the step/epoch position "
                             "(the learning-rate schedule and the data order continue where they stopped)")
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


def build_training(cfg: Config, info: RunInfo, dataset_path: Optional[str], spec):
    """This rank's dataset shard (of the folder, or on the fly when ``dataset_path`` is None) plus the
    network, schedule and one-step training cell."""
    from src.dataset import create_dataset
    from src.warpctc_for_train import build_train_cell

    dataset = create_dataset(dataset_path, cfg, spec, training=True, num_shards=info.group_size,
                             shard_id=info.rank, platform=info.platform)
    steps_per_epoch = dataset.get_dataset_size()
    check_run_length(cfg, steps_per_epoch, dataset_path)
    net, train_cell, lr = build_train_cell(cfg, info.platform, steps_per_epoch, info.group_size)
    return dataset, net, train_cell, steps_per_epoch, lr


# MindSpore lists the sample indices of a whole epoch in memory when the epoch starts (~45 bytes
# each, however lazy the sampler): about 0.5 GB at this bound.
MAX_EPOCH_SAMPLES = 10_000_000


def check_run_bounds(cfg: Config) -> None:
    """ValueError naming the option when --train_steps or --synthetic_images is beyond what a run can hold
    (checked before any MindSpore work)."""
    from src.lr_schedule import MAX_STEPS

    if cfg.train_steps > MAX_STEPS:
        raise ValueError(f"--train_steps {cfg.train_steps:,} is more than the {MAX_STEPS:,} steps a run may train "
                         "(one learning rate per step is kept in every checkpoint)")
    if cfg.synthetic_images > MAX_EPOCH_SAMPLES:
        raise ValueError(f"--synthetic_images {cfg.synthetic_images:,} is more than the {MAX_EPOCH_SAMPLES:,} captchas "
                         "an epoch may hold (MindSpore lists an epoch's sample indices in memory); train more epochs "
                         "(--epoch_size) instead")


def check_run_length(cfg: Config, steps_per_epoch: int, dataset_path: Optional[str]) -> None:
    """ValueError naming the options when the run has more steps than its per-step rate table may hold."""
    from src.lr_schedule import MAX_STEPS

    total = cfg.train_steps or cfg.epoch_size * steps_per_epoch
    if total > MAX_STEPS:
        source = " and ".join(part for part in (dataset_path and "--dataset_path",
                                                cfg.synthetic_images and f"--synthetic_images {cfg.synthetic_images:,}")
                              if part)
        raise ValueError(f"--epoch_size {cfg.epoch_size} x {steps_per_epoch:,} steps per epoch ({source} at "
                         f"--batch_size {cfg.batch_size}) is {total:,} steps, more than the {MAX_STEPS:,} a run may "
                         "train (one learning rate per step is kept in every checkpoint); lower --epoch_size, or end "
                         "the run sooner with --train_steps")


def learning_curve(args: argparse.Namespace, cfg: Config, info: RunInfo, net, lr, start_step: int, spec,
                   total_steps: int):
    """The LearningCurve callback with its held-out batches loaded once, in memory (nothing written yet)."""
    from src.run.callbacks import LearningCurve
    from src.dataset import load_batches

    if args.eval_every <= 0 or args.eval_images < 0:
        raise ValueError("--eval_every must be positive and --eval_images >= 0")
    batches, count = load_batches(args.eval_dataset_path, cfg, spec, limit=args.eval_images, platform=info.platform)
    csv_path = _curve_csv(args, cfg, info)
    points = [step for step in range(start_step + 1, total_steps + 1) if step % args.eval_every == 0]
    if not points or points[-1] != total_steps:
        points.append(total_steps)
    if len(points) == 1:
        when = (f"at the end only (step {total_steps:,}): the run is shorter than --eval_every {args.eval_every}")
    else:
        when = f"every {args.eval_every} steps and at the end ({len(points)} points, the last at step {total_steps:,})"
    print(f"learning curve: {count} images of {args.eval_dataset_path} {when} -> {csv_path}", flush=True)
    return LearningCurve(net, batches, args.eval_every, csv_path, lr, spec, start_step)


def _curve_csv(args: argparse.Namespace, cfg: Config, info: RunInfo) -> str:
    return args.curve_csv or os.path.join(_checkpoint_dir(cfg, info), "learning_curve.csv")


def make_callbacks(cfg: Config, info: RunInfo, steps_per_epoch: int, start_step: int, total_steps: int,
                   optimizer, record: Dict[str, object], owned: Sequence[str]) -> Tuple[List, object, Optional[object]]:
    """Step counter, loss and progress lines, timing, the stop at --train_steps and checkpointing.

    ``record`` goes into every checkpoint; ``owned`` lists the checkpoints of the runs this one
    continues, which its pruning may delete. Returns the callback list, its Progress and its
    StepCheckpoint (None with checkpoints off).
    """
    from mindspore.train import LossMonitor, TimeMonitor

    from src.run.callbacks import Progress, ResumePosition, StepCheckpoint, StopAtStep
    from src.checkpoint.files import checkpoint_prefix, run_prefixes

    progress = Progress(total_steps, optimizer)
    callbacks = [ResumePosition(start_step), LossMonitor(per_print_times=1), progress,
                 TimeMonitor(data_size=steps_per_epoch)]
    if total_steps % steps_per_epoch:
        callbacks.append(StopAtStep(total_steps))
    checkpoints = None
    if cfg.save_checkpoint:
        checkpoints = StepCheckpoint(_checkpoint_dir(cfg, info), cfg.save_checkpoint_steps, cfg.keep_checkpoint_max,
                                     start_step, prefix=checkpoint_prefix(cfg), prunable=run_prefixes(cfg),
                                     append=record, owned=owned)
        callbacks.append(checkpoints)
    return callbacks, progress, checkpoints


class RunState:
    """What a Ctrl-C / SIGTERM message needs to know; filled in as the run gets going."""

    def __init__(self, argv: Sequence[str]):
        self.argv = list(argv)
        self.distributed = False
        self.total_steps: Optional[int] = None
        self.resumed_from: Optional[Tuple[str, int]] = None      # (checkpoint, its global step)
        self.save_checkpoint = True
        self.progress = None                                       # src.run.callbacks.Progress
        self.checkpoints = None                                    # src.run.callbacks.StepCheckpoint

    def busy(self):
        """Held while a checkpoint is being written."""
        return self.checkpoints.busy if self.checkpoints is not None else contextlib.nullcontext()

    def command(self, resume_from: Optional[str]) -> str:
        """This run's command line, continuing from ``resume_from`` when given."""
        args, skip = [], False
        for token in self.argv:
            if skip:
                skip = False
            elif resume_from and token in ("--resume_checkpoint", "--init_checkpoint"):
                skip = True
            elif not (resume_from and token.startswith(("--resume_checkpoint=", "--init_checkpoint="))):
                args.append(token)
        if resume_from:
            args += ["--resume_checkpoint", resume_from]
        return shlex.join(["python", sys.argv[0]] + args)

    def interrupted(self, signum: int) -> str:
        """The one line printed when a signal ends the run."""
        step = self.progress.step if self.progress is not None else None
        where = (f"after step {step} of {self.total_steps}" if step is not None
                 else "before training started")
        saved = None
        if self.checkpoints is not None and self.checkpoints.last_path:
            saved = (os.path.abspath(self.checkpoints.last_path), self.checkpoints.last_step)
        elif self.resumed_from:
            saved = (os.path.abspath(self.resumed_from[0]), self.resumed_from[1])
        if saved is None:
            state = ("no checkpoint saved yet" if self.save_checkpoint
                     else "checkpoints are off (--save_checkpoint false)")
            return (f"train.py: interrupted by {signal.Signals(signum).name} {where}; {state}; "
                    f"start again with: {self.command(None)}")
        how = (f"relaunch with --resume_checkpoint {saved[0]}" if self.distributed
               else f"resume with: {self.command(saved[0])}")
        return (f"train.py: interrupted by {signal.Signals(signum).name} {where}; last checkpoint {saved[0]} "
                f"(step {saved[1]}); {how}")


def run(args: argparse.Namespace, cfg: Config, state: RunState) -> int:
    import mindspore as ms
    from mindspore.train import Model

    from src.checkpoint.files import remove_unfinished_saves, run_prefixes
    from src.checkpoint.model import model_record
    from src.checkpoint.records import new_training_id, training_record
    from src.run.lock import hold_folder

    from src.data.manifest import dataset_report

    info = set_up(args.platform, args.run_distribute, args.device_id)
    spec = CaptchaSpec.from_config(cfg)
    if info.rank == 0 and args.dataset_path is None:
        from src.dataset import describe_synthetic

        print(f"dataset: {describe_synthetic(cfg, spec)}", flush=True)
        if args.eval_dataset_path:
            print("\n".join(dataset_report(args.eval_dataset_path)), flush=True)
    elif info.rank == 0:
        print("\n".join(dataset_report(args.dataset_path, args.eval_dataset_path)), flush=True)
        if cfg.synthetic_images:
            from src.dataset import describe_synthetic

            print(f"mixed with: {describe_synthetic(cfg, spec)}", flush=True)
        if cfg.augment_folder:
            from src.data.render import AUGMENTATION_FIELDS, RenderStyle

            changed = RenderStyle.from_config(cfg).changes()
            shown = ", ".join(f"{name}={changed[name]}" for name in AUGMENTATION_FIELDS if name in changed)
            print(f"folder images augmented: {shown or 'nothing (no image_* or color_jitter option is set)'}",
                  flush=True)
    state.distributed, state.save_checkpoint = info.distributed, cfg.save_checkpoint
    ms.set_seed(cfg.seed)
    dataset, net, train_cell, steps_per_epoch, lr = build_training(cfg, info, args.dataset_path, spec)
    total_steps = len(lr)                                   # train_steps, or epoch_size whole epochs
    state.total_steps = total_steps
    epochs = -(-total_steps // steps_per_epoch)
    sink = args.dataset_sink_mode == "on" or (args.dataset_sink_mode == "auto" and info.platform != "CPU")
    if sink and total_steps % steps_per_epoch:
        # A sunk epoch runs on the device in one go; it cannot stop at a step inside it.
        raise ValueError(f"--train_steps {total_steps} must be a multiple of the {steps_per_epoch} steps per epoch "
                         "with dataset sink mode (or use --dataset_sink_mode off)")
    record = {"batch_size": cfg.batch_size, "device_num": info.group_size, "steps_per_epoch": steps_per_epoch}
    start_step, training = 0, None          # None: a new training (its id is drawn below)
    if args.init_checkpoint:
        from src.checkpoint.finetune import load_for_finetune

        notice = load_for_finetune(net, args.init_checkpoint, spec, carry_head=not cfg.fresh_head)
        print(f"{notice}; optimizer and schedule start at step 0", flush=True)
    if args.resume_checkpoint:
        from src.checkpoint.resume import restore_training

        resumed = restore_training(train_cell, args.resume_checkpoint, record, cfg)
        if resumed.notice:
            print(resumed.notice, flush=True)
        resume_path, start_step, training = resumed.path, resumed.step, resumed.training
        state.resumed_from = (resume_path, start_step)
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
    curve = None
    if args.eval_dataset_path and info.rank == 0:
        curve = learning_curve(args, cfg, info, net, lr, start_step, spec, total_steps)
    # Everything above only read; from here on the run writes. One run per folder: a second
    # one would interleave its files with this one's.
    folder = _checkpoint_dir(cfg, info)
    if cfg.save_checkpoint or (curve is not None and args.curve_csv is None):
        hold_folder(folder)             # held until the process ends, however it ends
        removed = remove_unfinished_saves(folder, run_prefixes(cfg))
        if removed:
            print(f"removed the unfinished save(s) of an interrupted run from {os.path.abspath(folder)}: "
                  f"{', '.join(removed)}", flush=True)
    owned = []
    if cfg.save_checkpoint:
        owned = _prunable_checkpoints(folder, training, record, cfg)
    append = {**record, **model_record(spec, net.architecture),
              **training_record(new_training_id() if training is None else training)}
    callbacks, state.progress, state.checkpoints = make_callbacks(cfg, info, steps_per_epoch, start_step,
                                                                  total_steps, train_cell.optimizer, append, owned)
    if curve is not None:
        curve.check_writable()
        callbacks.insert(1, curve)
    model = Model(train_cell)
    start = time.time()
    model.train(epochs, dataset, callbacks=callbacks,
                dataset_sink_mode=sink, initial_epoch=start_step // steps_per_epoch)
    if not cfg.save_checkpoint:
        saved = "no checkpoints saved (--save_checkpoint false)"
    elif state.checkpoints is not None and state.checkpoints.last_path:
        # The file a user reads or adapts from next: named in full, as the README's next step uses it.
        saved = f"last checkpoint {os.path.abspath(state.checkpoints.last_path)}"
    else:
        saved = f"checkpoints in {os.path.abspath(folder)}"
    print(f"training finished in {time.time() - start:.1f} s; {saved}", flush=True)
    return 0


def _prunable_checkpoints(folder: str, training: Optional[str], record: Dict[str, int], cfg: Config) -> List[str]:
    """The checkpoints of ``folder`` that this run's pruning may delete: those of the training it
    continues (``training``; None for a new one). Every other checkpoint stays, which one line says."""
    from src.checkpoint.resume import training_checkpoints

    owned, others = training_checkpoints(folder, training, record, cfg)
    if others:
        print(f"keeping {len(others)} checkpoint(s) of other trainings in {os.path.abspath(folder)} "
              f"(e.g. {os.path.basename(others[-1])}): --keep_checkpoint_max counts only this training's",
              flush=True)
    return owned


def main(argv: Optional[Sequence[str]] = None) -> int:
    from src.run.interrupt import exit_on_signals

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    state = RunState(argv)
    exit_on_signals(state.interrupted, state.busy)
    try:
        cfg = config_from_args(args)
        if args.init_checkpoint and args.resume_checkpoint:
            raise ValueError("--init_checkpoint starts a new training and --resume_checkpoint continues one: "
                             "give only one of them")
        if args.init_checkpoint:
            from src.checkpoint.finetune import finetune_config

            cfg, notice = finetune_config(args.init_checkpoint, cfg, explicit_overrides(args), args.dataset_path)
            cfg = validate(cfg)
            if notice:
                print(notice, flush=True)
        if args.dataset_path is None and cfg.augment_folder:
            raise ValueError("--augment_folder true augments the images of --dataset_path: give a folder")
        if cfg.label_classes and not cfg.synthetic_images:
            raise ValueError(f"--label_classes {cfg.label_classes!r} picks the labels of captchas drawn on the fly: "
                             "give --synthetic_images N")
        if args.dataset_path is None and not cfg.synthetic_images:
            raise ValueError("the following arguments are required: --dataset_path (or --synthetic_images N to "
                             "train on N captchas per epoch rendered on the fly)")
        check_run_bounds(cfg)
        return run(args, cfg, state)
    except ValueError as err:
        return report_error("train.py", err)
    except RuntimeError as err:        # an image that went bad after the up-front check
        from src.dataset import pipeline_error

        return report_error("train.py", pipeline_error(err))
    except BrokenPipeError as err:     # stdout's reader has gone: end as predict.py and eval.py do
        return report_error("train.py", stdout_error(err))
    except OSError as err:      # an environment failure not foreseen above: still one line, naming the file
        where = f"{err.filename}: " if err.filename else ""
        return report_error("train.py", OSError(f"{where}{err.strerror or err}"))


if __name__ == "__main__":
    sys.exit(main())
