"""CTC loss over the WarpCTC logits, matching the label coding of :class:`src.captcha_spec.CaptchaSpec`."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from src.captcha_spec import CaptchaSpec


class CTCLoss(nn.Cell):
    """Mean over the batch of the per-sample CTC negative log-likelihood.

    ``logits`` are ``(T, B, C)`` with ``T = sequence_length`` (the network's, ``net.sequence_length``)
    for every sample; ``label`` is ``(B, S)`` class indices right-padded with the spec's blank. The true label
    length is the number of non-blank entries, so padding never counts as a character.
    Standard CTC: repeated labels are merged along a path unless a blank separates them.
    """

    def __init__(self, spec: CaptchaSpec, batch_size: int, sequence_length: int):
        super().__init__()
        self.blank = spec.blank
        self.ctc = ops.CTCLossV2(blank=spec.blank, reduction="none", zero_infinity=False)
        self.input_lengths = ms.Tensor([sequence_length] * batch_size, ms.int32)

    def construct(self, logits, label):
        log_probs = ops.log_softmax(logits, axis=-1)
        target_lengths = ops.cast(label != self.blank, ms.int32).sum(axis=1)
        neg_log_likelihood, _ = self.ctc(log_probs, label, self.input_lengths, target_lengths)
        return neg_log_likelihood.mean()
