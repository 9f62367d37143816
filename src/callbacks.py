"""Training callbacks that make a resumed run continue the original one's step count."""
from __future__ import annotations

from mindspore.train import Callback, ModelCheckpoint


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
