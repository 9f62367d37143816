"""The WarpCTC network: every pixel column is a time step of a 2-layer LSTM, then a dense layer."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from src.captcha_spec import CaptchaSpec


class StackedRNN(nn.Cell):
    """``(B, 3, H, W)`` images -> ``(W, B, num_classes)`` per-column logits.

    ``input_size`` is ``H * 3``, ``num_classes`` the alphabet plus the blank (both from a
    :class:`CaptchaSpec`; the defaults are the original's digits, 11 classes).

    Column ``w`` of the image is time step ``w``; its feature vector is the column's ``H`` rows
    x 3 channels (``H * 3`` values, row-major: row, then channel). The LSTM starts from a zero
    state. ``lstm_dtype=float16`` runs the LSTM in half precision (Ascend, as the original did)
    while the dense layer and the output stay float32.
    """

    def __init__(self, input_size: int, hidden_size: int = 512, num_layers: int = 2,
                 num_classes: int = CaptchaSpec().num_classes, lstm_dtype=ms.float32, forget_bias: float = 0.0):
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_classes = num_classes
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers=num_layers, has_bias=True,
                            batch_first=False, bidirectional=False)
        self.fc = nn.Dense(hidden_size, num_classes)
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
        y = ops.cast(y, ms.float32)
        y = self.fc(ops.reshape(y, (width * batch, self.hidden_size)))
        return ops.reshape(y, (width, batch, self.num_classes))


def shift_forget_bias(lstm: nn.LSTM, hidden_size: int, value: float) -> None:
    """Add ``value`` to the forget-gate part of every layer's input bias.

    A positive forget bias makes the cell keep its state from the first step, which shortens
    CTC's early all-blank plateau. Gate order in MindSpore's LSTM weights is i, f, g, o, so the
    forget gate is rows ``hidden_size:2*hidden_size`` (checked by tests/test_network.py).
    """
    for param in lstm.get_parameters():
        if param.name.rsplit(".", 1)[-1].startswith("bias_ih"):
            bias = param.asnumpy().copy()
            bias[hidden_size:2 * hidden_size] += value
            param.set_data(ms.Tensor(bias, param.dtype))


class WithLabelCell(nn.Cell):
    """Evaluation wrapper: ``(image, label) -> (logits, label)``, the inputs of the metrics."""

    def __init__(self, backbone: nn.Cell):
        super().__init__(auto_prefix=False)
        self.backbone = backbone

    def construct(self, image, label):
        return self.backbone(image), label


def lstm_dtype_for(platform: str):
    """The one platform difference of the network: Ascend runs the LSTM in float16."""
    return ms.float16 if platform == "Ascend" else ms.float32


def create_warpctc(cfg, platform: str = "CPU", spec: CaptchaSpec | None = None) -> StackedRNN:
    """The network for a :class:`src.config.Config` (hidden size, init) reading captchas of ``spec``
    (default: the config's) on a platform; train, eval, predict, export and the hub build it here."""
    spec = spec or CaptchaSpec.from_config(cfg)
    net = StackedRNN(input_size=spec.input_size, hidden_size=cfg.hidden_size, num_classes=spec.num_classes,
                     lstm_dtype=lstm_dtype_for(platform), forget_bias=cfg.forget_bias)
    net.spec = spec       # what the outputs mean: decode with net.spec.greedy_decode(logits)
    return net
