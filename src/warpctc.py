"""The original family (``network: warpctc``): every pixel column is a time step of a 2-layer LSTM, then the
shared dense CTC head. Built by its family declaration, ``src/models/warpctc.py``."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from src.captcha_spec import CaptchaSpec
from src.ctc_head import CTCHead


class StackedRNN(nn.Cell):
    """``(B, 3, H, W)`` images -> ``(W, B, num_classes)`` per-column logits.

    ``input_size`` is ``H * 3``, ``num_classes`` the alphabet plus the blank (both from a
    :class:`CaptchaSpec`; the defaults are the original's digits, 11 classes).

    Column ``w`` of the image is time step ``w``; its feature vector is the column's ``H`` rows
    x 3 channels (``H * 3`` values, row-major: row, then channel). The LSTM starts from a zero
    state. ``lstm_dtype=float16`` runs the LSTM in half precision (Ascend, as the original did)
    while the dense layer and the output stay float32. ``bidirectional`` also reads the columns
    right to left (not the original; the head then sees both directions' states).
    """

    def __init__(self, input_size: int, hidden_size: int = 512, num_layers: int = 2,
                 num_classes: int = CaptchaSpec().num_classes, lstm_dtype=ms.float32, forget_bias: float = 0.0,
                 bidirectional: bool = False):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, has_bias=True,
                            batch_first=False, bidirectional=bidirectional)
        self.fc = CTCHead(hidden_size * (2 if bidirectional else 1), num_classes)
        if forget_bias:
            shift_forget_bias(self.lstm, hidden_size, forget_bias)
        self.lstm_dtype = lstm_dtype
        if lstm_dtype != ms.float32:
            self.lstm.to_float(lstm_dtype)

    def construct(self, x):
        batch, _, _, width = x.shape
        x = ops.transpose(x, (3, 0, 2, 1))                    # (W, B, H, C)
        x = ops.reshape(x, (width, batch, self.input_size))  # (W, B, H*C)
        x = ops.cast(x, self.lstm_dtype)
        y, _ = self.lstm(x)                                   # zero initial state
        return self.fc(ops.cast(y, ms.float32))


def shift_forget_bias(lstm: nn.LSTM, hidden_size: int, value: float) -> None:
    """Add ``value`` to the forget-gate part of every layer's input bias.

    A positive forget bias makes the cell keep its state from the first step, which shortens
    CTC's early all-blank plateau. Gate order in MindSpore's LSTM weights is i, f, g, o, so the
    forget gate is rows ``hidden_size:2*hidden_size`` (checked by tests/unit/test_network.py).
    """
    for param in lstm.get_parameters():
        if param.name.rsplit(".", 1)[-1].startswith("bias_ih"):
            bias = param.asnumpy().copy()
            bias[hidden_size:2 * hidden_size] += value
            param.set_data(ms.Tensor(bias, param.dtype))
