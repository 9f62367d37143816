"""One training step: loss, gradients, data-parallel mean, global-norm clipping, update."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from src.captcha_spec import CaptchaSpec
from src.loss import CTCLoss
from src.lr_schedule import get_lr
from src.models import create_network


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


# Optimizer entries a resume takes from the configuration, not the checkpoint: the per-step
# learning-rate table and the momentum factor.
NOT_RESTORED = ("learning_rate", "momentum")


def build_train_cell(cfg, platform: str, steps_per_epoch: int, group_size: int = 1):
    """Network, per-step learning rates and the training cell of the recipe in ``cfg``.

    Returns ``(net, train_cell, lr)``; ``train.py`` and the benchmarks build the step this way.
    As in the original, the base learning rate is multiplied by the device count.
    """
    lr = get_lr(cfg.epoch_size, steps_per_epoch, cfg.learning_rate * group_size, cfg.lr_schedule, cfg.warmup_steps,
                cfg.train_steps)
    spec = CaptchaSpec.from_config(cfg)
    net = create_network(cfg, platform, spec)
    loss = CTCLoss(spec, cfg.batch_size, net.sequence_length)
    if cfg.optimizer == "adam":
        opt = nn.Adam(net.trainable_params(), learning_rate=ms.Tensor(lr))
    else:
        opt = nn.SGD(net.trainable_params(), learning_rate=ms.Tensor(lr), momentum=cfg.momentum)
    train_cell = TrainOneStepCellWithGradClip(nn.WithLossCell(net, loss), opt, clip_norm=cfg.clip_global_norm)
    train_cell.set_train()
    return net, train_cell, lr
