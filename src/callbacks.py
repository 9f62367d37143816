"""Training callbacks that make a resumed run continue the original one's step count."""
from __future__ import annotations

import os
import time

from mindspore.train import Callback, ModelCheckpoint

from src.learning_curve import HEADER, read_learning_curve, train_seconds_at


class ResumePosition(Callback):
    """Start the run's global step counter at ``start_step`` (0 for a fresh run).

    ``Model.train(initial_epoch=...)`` restores the epoch number but restarts the step counter
    at 0; every later callback (loss print, checkpoint names and cadence) reads this counter.
    Put it first in the callback list.
    """

    def __init__(self, start_step: int = 0):
        super().__init__()
        self.start_step = int(start_step)

    def on_train_begin(self, run_context):
        run_context.original_args().cur_step_num = self.start_step


class StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose every-N-steps cadence counts from global step 0, also after a resume.

    Files are written to a temporary name and renamed when complete (MindSpore's own
    behaviour), so a kill during a save never replaces a good checkpoint with a broken one.
    """

    def __init__(self, start_step: int = 0, **kwargs):
        super().__init__(**kwargs)
        # Saves happen at multiples of save_checkpoint_steps; the resume step was one of them
        # (or the end of a run), so the next save is save_checkpoint_steps after it.
        self._last_triggered_step = int(start_step)


class StopAtStep(Callback):
    """End the run after global step ``last_step`` (``--train_steps``), mid-epoch if need be.

    Callbacks after it still see that step; ``ModelCheckpoint`` then saves it at train end.
    """

    def __init__(self, last_step: int):
        super().__init__()
        self.last_step = int(last_step)

    def on_train_step_end(self, run_context):
        if run_context.original_args().cur_step_num >= self.last_step:
            run_context.request_stop()


class LearningCurve(Callback):
    """Every ``every`` steps: evaluate on held-out images and append a row to a CSV file.

    Columns: ``step, epoch, train_seconds, lr, train_loss`` (mean over the steps since the last
    row), ``eval_accuracy, eval_cer``. ``train_seconds`` is cumulative training time across
    resumed runs, evaluation excluded; a resume picks it up at the resume step (interpolated
    between the rows around it). Appending to an existing file writes ``# resumed at step N``
    first, so resume points stay on record (see ``src.learning_curve``).
    """

    def __init__(self, network, batches, every: int, csv_path: str, learning_rates, start_step: int = 0):
        super().__init__()
        self.network = network
        self.batches = batches            # list of (image Tensor, label numpy) held in memory
        self.every = int(every)
        self.csv_path = csv_path
        self.learning_rates = learning_rates
        self.start_step = int(start_step)
        self.losses = []
        self.clock = None
        # Read now, not at train begin, so that a damaged file stops the run before it starts.
        self.existing = os.path.isfile(csv_path) and os.path.getsize(csv_path) > 0
        rows = read_learning_curve(csv_path) if self.existing else []
        self.offset = train_seconds_at(rows, self.start_step) if self.start_step else 0.0

    def on_train_begin(self, run_context):
        with open(self.csv_path, "a", encoding="utf-8") as handle:
            if not self.existing:
                handle.write(HEADER + "\n")
            else:
                handle.write(f"# resumed at step {self.start_step}\n")
        self.clock = time.time()

    def on_train_step_end(self, run_context):
        cb_params = run_context.original_args()
        self.losses.append(float(cb_params.net_outputs.asnumpy()))
        step = cb_params.cur_step_num
        if step % self.every == 0 or step == len(self.learning_rates):
            self.offset += time.time() - self.clock
            accuracy, cer = self.evaluate()
            lr = float(self.learning_rates[min(step, len(self.learning_rates)) - 1])
            with open(self.csv_path, "a", encoding="utf-8") as handle:
                handle.write(f"{step},{cb_params.cur_epoch_num},{self.offset:.1f},{lr:.6g},"
                             f"{sum(self.losses) / len(self.losses):.6g},{accuracy:.4f},{cer:.4f}\n")
            print(f"step {step}: eval accuracy {accuracy:.4f}, CER {cer:.4f} "
                  f"({self.offset:.0f} s of training)", flush=True)
            self.losses = []
            self.clock = time.time()

    def evaluate(self):
        from src.metric import WarpCTCAccuracy, WarpCTCCharErrorRate

        accuracy, cer = WarpCTCAccuracy(), WarpCTCCharErrorRate()
        for image, label in self.batches:
            logits = self.network(image).asnumpy()
            accuracy.update(logits, label)
            cer.update(logits, label)
        return accuracy.eval(), cer.eval()
