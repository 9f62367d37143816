"""One training step: loss, gradients, data-parallel mean, global-norm clipping, update."""
from __future__ import annotations

from mindspore import nn, ops


class TrainOneStepCellWithGradClip(nn.TrainOneStepCell):
    """``nn.TrainOneStepCell`` plus clipping of the gradients to a global norm.

    The parent already builds the data-parallel gradient reducer (mean over devices) when
    the parallel context is data parallel; clipping happens after that mean, so it acts on
    the gradient of the global batch and every device applies the same update.
    ``ops.clip_by_global_norm(g, c)`` is the original's ``g * c / max(norm, c)``.
    """

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, clip_norm: float = 10.0, sens: float = 1.0):
        super().__init__(network, optimizer, sens)
        self.clip_norm = float(clip_norm)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        grads = ops.clip_by_global_norm(grads, self.clip_norm)
        self.optimizer(grads)
        return loss
