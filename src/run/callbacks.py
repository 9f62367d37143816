"""Training callbacks: resume-aware step counter, crash-safe checkpoints, progress, stop at a step, learning curve."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from typing import Iterable, Mapping, Optional, Sequence

from mindspore.train import Callback

from src.checkpoint.files import prune_checkpoints, run_prefix, save_checkpoint_file
from src.metric import WarpCTCAccuracy, WarpCTCCharErrorRate
from src.run.learning_curve import HEADER, partial_last_line, read_learning_curve, train_seconds_at


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


class StepCheckpoint(Callback):
    """Save ``<prefix>-<epoch>_<step in epoch>.ckpt`` every ``every`` global steps and at the end.

    The cadence counts from global step 0, also after a resume. Each file is complete and on disk
    before it gets its name (``src.checkpoint.save_checkpoint_file``), and only then are this
    training's oldest checkpoints (by training position) pruned to ``keep``, so a failed save never
    costs a good checkpoint. This training's checkpoints are the files this callback writes plus
    ``owned``, those of the runs it continues; no other file of the folder is ever deleted.
    ``append`` entries (run, model and training record) are stored with ``epoch_num`` and
    ``step_num``. ``busy`` is held while a file is being written.
    """

    def __init__(self, directory: str, every: int, keep: int, start_step: int = 0, prefix: str = "warpctc",
                 append: Optional[Mapping[str, object]] = None, owned: Iterable[str] = (),
                 prunable: Sequence[str] = ()):
        super().__init__()
        self.directory = directory
        self.every = int(every)
        self.keep = int(keep)
        self.prunable = tuple(prunable) or (prefix,)     # the prefixes of the files ``owned`` may hold
        self.prefix = run_prefix(directory, prefix)
        self.append = dict(append or {})
        self.owned = set(owned)
        # The resume step was saved (a multiple of ``every`` or a run's end): the next save is
        # ``every`` steps after it.
        self.last_step = int(start_step)
        self.last_path: Optional[str] = None
        self.busy = threading.Lock()

    def on_train_step_end(self, run_context):
        cb_params = run_context.original_args()
        if cb_params.cur_step_num >= self.last_step + self.every:
            self.save(cb_params)

    def on_train_end(self, run_context):
        cb_params = run_context.original_args()
        if cb_params.cur_step_num != self.last_step:
            self.save(cb_params)

    def save(self, cb_params) -> str:
        """Write the checkpoint of the current step, then prune; returns its path."""
        step = cb_params.cur_step_num
        name = f"{self.prefix}-{cb_params.cur_epoch_num}_{(step - 1) % cb_params.batch_num + 1}.ckpt"
        path = os.path.join(self.directory, name)
        with self.busy:
            save_checkpoint_file(cb_params.train_network, path,
                                 {"epoch_num": cb_params.cur_epoch_num, "step_num": step, **self.append})
            self.last_step, self.last_path = step, path
            self.owned.add(path)
        try:
            prune_checkpoints(self.directory, self.keep, self.owned, self.prunable, protect=path)
        except OSError as err:      # the new checkpoint is safe; an old one merely stays
            print(f"warning: could not remove the old checkpoint {err.filename} ({err.strerror}); it stays",
                  file=sys.stderr, flush=True)
        return path


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress(Callback):
    """Print ``step N of M`` with seconds per step, the learning rate and the time left.

    Every ``every_steps`` global steps, or when ``every_seconds`` have passed since the last
    line, and at the last step. The learning rate is read from the optimizer (its rate table at
    its own step counter), so it shows what the optimizer really used for the step.
    """

    def __init__(self, total_steps: int, optimizer, every_steps: int = 10, every_seconds: float = 30.0):
        super().__init__()
        self.total_steps = int(total_steps)
        self.optimizer = optimizer
        self.every_steps = int(every_steps)
        self.every_seconds = float(every_seconds)
        self.step = None              # last finished global step (None before training starts)
        self.clock = None             # (time, step) at the start of the current measurement window

    def on_train_begin(self, run_context):
        self.step = run_context.original_args().cur_step_num      # the resume step (after ResumePosition)

    def on_train_step_end(self, run_context):
        self.step = run_context.original_args().cur_step_num
        now = time.time()
        if self.clock is None:
            # The first step includes graph compilation: time the steps after it.
            self.clock = (now, self.step)
            return
        since, since_step = self.clock
        due = self.step % self.every_steps == 0 or now - since >= self.every_seconds or self.step >= self.total_steps
        if due and self.step > since_step:
            per_step = (now - since) / (self.step - since_step)
            print(f"step {self.step} of {self.total_steps}: {per_step:.3f} s/step, lr {self.learning_rate():.6g}, "
                  f"{_duration(per_step * (self.total_steps - self.step))} left", flush=True)
            self.clock = (now, self.step)

    def learning_rate(self) -> float:
        """The rate of the optimizer's last step: its rate table at its own step counter."""
        params = {p.name: p for p in self.optimizer.get_parameters()}
        table = params["learning_rate"].asnumpy().reshape(-1)
        done = int(params["global_step"].asnumpy().reshape(-1)[0])
        return float(table[min(max(done - 1, 0), len(table) - 1)])


class StopAtStep(Callback):
    """End the run after global step ``last_step`` (``--train_steps``), mid-epoch if need be.

    Callbacks after it still see that step; ``StepCheckpoint`` then saves it at train end.
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
    first, so resume points stay on record (see ``src.run.learning_curve``).
    """

    def __init__(self, network, batches, every: int, csv_path: str, learning_rates, spec, start_step: int = 0):
        super().__init__()
        self.network = network
        self.spec = spec
        self.batches = batches            # list of (image Tensor, label numpy) held in memory
        self.every = int(every)
        self.csv_path = csv_path
        self.learning_rates = learning_rates
        self.start_step = int(start_step)
        self.losses = []
        self.clock = None
        # Read now, not at train begin, so that a damaged file stops the run before it starts. A last
        # row cut short by a stop in the middle of writing it is left out, and dropped from the file
        # by check_writable (the resumed run replays its step and writes it again).
        self.partial = partial_last_line(csv_path) if os.path.isfile(csv_path) else b""
        self.existing = os.path.isfile(csv_path) and os.path.getsize(csv_path) > len(self.partial)
        rows = read_learning_curve(csv_path, skip_partial=True) if self.existing else []
        self.offset = train_seconds_at(rows, self.start_step) if self.start_step else 0.0

    def check_writable(self) -> None:
        """ValueError naming the CSV when it cannot be appended to (call before training, once the run
        may write); drops a last row cut short, with a one-line notice."""
        dropped = False
        try:
            os.makedirs(os.path.dirname(os.path.abspath(self.csv_path)), exist_ok=True)
            with open(self.csv_path, "a", encoding="utf-8"):
                pass
            if self.partial and partial_last_line(self.csv_path) == self.partial:     # still the line read
                os.truncate(self.csv_path, os.path.getsize(self.csv_path) - len(self.partial))
                dropped = True
        except OSError as err:
            raise ValueError(f"learning curve {self.csv_path}: cannot be written ({err.strerror})") from None
        if dropped:
            cut = self.partial[:80].decode("utf-8", "replace")
            print(f"learning curve {self.csv_path}: dropped its last line {cut!r}, cut short when a run stopped in "
                  "the middle of writing it", flush=True)

    def _append(self, text: str) -> None:
        """Append ``text`` whole and on disk, or not at all: a failed write is undone (a full disk leaves
        no partial row)."""
        data = memoryview(text.encode("utf-8"))
        try:
            fd = os.open(self.csv_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as err:
            raise ValueError(f"learning curve {self.csv_path}: cannot be written ({err.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
                os.fsync(fd)
            except OSError as err:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise ValueError(f"learning curve {self.csv_path}: cannot be written ({err.strerror})") from None
        finally:
            os.close(fd)

    def on_train_begin(self, run_context):
        self._append(f"# resumed at step {self.start_step}\n" if self.existing else HEADER + "\n")
        self.clock = time.time()

    def on_train_step_end(self, run_context):
        cb_params = run_context.original_args()
        self.losses.append(float(cb_params.net_outputs.asnumpy()))
        step = cb_params.cur_step_num
        if step % self.every == 0 or step == len(self.learning_rates):
            self.offset += time.time() - self.clock
            accuracy, cer = self.evaluate()
            lr = float(self.learning_rates[min(step, len(self.learning_rates)) - 1])
            self._append(f"{step},{cb_params.cur_epoch_num},{self.offset:.1f},{lr:.6g},"
                         f"{sum(self.losses) / len(self.losses):.6g},{accuracy:.4f},{cer:.4f}\n")
            print(f"step {step}: eval accuracy {accuracy:.4f}, CER {cer:.4f} "
                  f"({self.offset:.0f} s of training)", flush=True)
            self.losses = []
            self.clock = time.time()

    def evaluate(self):
        accuracy, cer = WarpCTCAccuracy(self.spec), WarpCTCCharErrorRate(self.spec)
        for image, label in self.batches:
            logits = self.network(image).asnumpy()
            accuracy.update(logits, label)
            cer.update(logits, label)
        return accuracy.eval(), cer.eval()
