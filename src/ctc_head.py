"""What every network family shares: the dense CTC head, the recurrent layers' dtype, and the evaluation wrapper
around a network."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn


def recurrent_dtype(platform: str):
    """The one platform difference of the networks: Ascend runs the recurrent layers in float16."""
    return ms.float16 if platform == "Ascend" else ms.float32


class CTCHead(nn.Dense):
    """``(T, B, features)`` -> ``(T, B, num_classes)`` logits: one dense layer applied at every step
    (``nn.Dense`` folds the leading axes itself).

    A subclass, not a wrapper, so that its parameters keep the names ``<name>.weight`` and
    ``<name>.bias`` that the original network's checkpoints use.
    """

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes)
        self.num_classes = num_classes


class WithLabelCell(nn.Cell):
    """Evaluation wrapper: ``(image, label) -> (logits, label)``, the inputs of the metrics."""

    def __init__(self, backbone: nn.Cell):
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, image, label):
        return self.backbone(image), label
