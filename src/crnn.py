"""The convolutional family: a small CRNN (conv backbone -> recurrent neck -> the shared CTC head).

The backbone turns a ``(B, 3, H, W)`` image into a short sequence of column features: stages of
3x3 convolutions (optionally with BatchNorm) and ReLU, each stage ending in a max-pool that halves
the height, and the width too in the first ``log2(width_stride)`` stages. What is left of the
height is folded into the features, so the sequence has ``T = W / width_stride`` steps. The neck
is an LSTM (uni- or bidirectional), the head the dense layer every family shares. Built by
the crnn family (``src/models/crnn.py``), which checks the hyper-parameters against the captcha spec.
"""
from __future__ import annotations

from typing import Sequence

import mindspore as ms
from mindspore import nn, ops

from src.ctc_head import CTCHead
from src.models.geometry import halvings, pooled


class ConvBackbone(nn.Cell):
    """``(B, 3, H, W)`` -> ``(B, C * H', W')`` column features, ``H' = H / 2**stages``, ``W' = W / width_stride``."""

    def __init__(self, channels: Sequence[int], convs_per_stage: int = 1, width_stride: int = 4,
                 batch_norm: bool = True):
        super().__init__()
        layers, previous = [], 3
        for stage, width in enumerate(channels):
            for _ in range(convs_per_stage):
                layers.append(nn.Conv2d(previous, width, 3, pad_mode="pad", padding=1, has_bias=not batch_norm,
                                        weight_init="HeUniform"))
                if batch_norm:
                    layers.append(nn.BatchNorm2d(width, momentum=0.9))
                layers.append(nn.ReLU())
                previous = width
            window = (2, 2) if stage < halvings(width_stride) else (2, 1)
            layers.append(nn.MaxPool2d(kernel_size=window, stride=window))
        self.layers = nn.SequentialCell(layers)
        self.out_channels = previous

    def construct(self, x):
        x = self.layers(x)                                   # (B, C, H', W')
        batch, channels, height, width = x.shape
        return ops.reshape(x, (batch, channels * height, width))


class CRNN(nn.Cell):
    """``(B, 3, H, W)`` images -> ``(W / width_stride, B, num_classes)`` logits.

    ``input_height`` is H, which must survive one halving per stage. ``recurrent_dtype`` float16
    runs the neck in half precision (Ascend), as the original family does with its LSTM.
    """

    def __init__(self, input_height: int, num_classes: int, channels: Sequence[int] = (32, 64, 128, 192),
                 convs_per_stage: int = 1, width_stride: int = 4, batch_norm: bool = True, hidden_size: int = 128,
                 bidirectional: bool = True, num_layers: int = 2, recurrent_dtype=ms.float32):
        super().__init__()
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.backbone = ConvBackbone(channels, convs_per_stage, width_stride, batch_norm)
        features = self.backbone.out_channels * pooled(input_height, len(channels))
        self.neck = nn.LSTM(features, hidden_size, num_layers=num_layers, has_bias=True, batch_first=False,
                            bidirectional=bidirectional)
        self.fc = CTCHead(hidden_size * (2 if bidirectional else 1), num_classes)
        self.recurrent_dtype = recurrent_dtype
        if recurrent_dtype != ms.float32:
            self.neck.to_float(recurrent_dtype)

    def construct(self, x):
        x = self.backbone(x)                                 # (B, F, T)
        x = ops.transpose(x, (2, 0, 1))                      # (T, B, F)
        y, _ = self.neck(ops.cast(x, self.recurrent_dtype))
        return self.fc(ops.cast(y, ms.float32))
