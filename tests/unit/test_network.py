"""Network shape and size, CTC loss against a numpy reference, schedule, gradient clipping."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import nn

from src.config import Config
from src.captcha_spec import CaptchaSpec
from src.loss import CTCLoss
from src.lr_schedule import get_lr
from src.models import create_network
from src.warpctc import StackedRNN, shift_forget_bias
from src.warpctc_for_train import TrainOneStepCellWithGradClip
from conftest import ctc_reference

DIGITS = CaptchaSpec()
BLANK, NUM_CLASSES, encode_label = DIGITS.blank, DIGITS.num_classes, DIGITS.encode

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")


def test_output_shape_dtype_and_zero_state_determinism():
    net = create_network(Config(hidden_size=32))
    x = ms.Tensor(np.random.default_rng(0).standard_normal((3, 3, 64, 160)).astype(np.float32))
    out = net(x)
    assert out.shape == (160, 3, NUM_CLASSES) and out.dtype == ms.float32
    np.testing.assert_array_equal(out.asnumpy(), net(x).asnumpy())   # no state carried between calls


def test_columns_are_time_steps():
    """Changing only image column w must leave the outputs before step w unchanged."""
    net = create_network(Config(hidden_size=16))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 160)).astype(np.float32)
    y = x.copy()
    y[:, :, :, 100] += 1.0
    a, b = net(ms.Tensor(x)).asnumpy(), net(ms.Tensor(y)).asnumpy()
    np.testing.assert_array_equal(a[:100], b[:100])
    assert np.abs(a[100] - b[100]).max() > 0


def test_forget_bias_shifts_exactly_the_forget_gate_of_every_layer():
    ms.set_seed(4)
    base = create_network(Config(hidden_size=8))
    ms.set_seed(4)
    shifted = create_network(Config(hidden_size=8, forget_bias=1.0))
    for a, b in zip(base.get_parameters(), shifted.get_parameters()):
        delta = b.asnumpy() - a.asnumpy()
        expected = np.zeros_like(delta)
        if ".bias_ih_l" in a.name:
            expected[8:16] = 1.0
        np.testing.assert_allclose(delta, expected, atol=1e-6, err_msg=a.name)
    assert sum(".bias_ih_l" in p.name for p in base.get_parameters()) == 2


def test_forget_bias_rows_are_the_forget_gate():
    """With zero weights and inputs, the state only grows across steps when those rows say "keep"."""
    lstm = nn.LSTM(3, 2, num_layers=1, has_bias=True)

    def hidden_over_time(forget_bias):
        for p in lstm.get_parameters():
            p.set_data(ms.Tensor(np.full(p.shape, 20.0 if "bias_ih" in p.name else 0.0, np.float32)))
        shift_forget_bias(lstm, 2, forget_bias)
        y, _ = lstm(ms.Tensor(np.zeros((3, 1, 3), np.float32)))
        return y.asnumpy()[:, 0, 0]

    # Input, cell and output gates saturated at 1: c_t = f * c_{t-1} + 1, h_t = tanh(c_t).
    np.testing.assert_allclose(hidden_over_time(-40.0), np.tanh([1.0, 1.0, 1.0]), rtol=1e-5)
    np.testing.assert_allclose(hidden_over_time(0.0), np.tanh([1.0, 2.0, 3.0]), rtol=1e-5)


def test_parameter_count_matches_formula():
    net = create_network(Config())
    counted = sum(int(np.prod(p.shape)) for p in net.trainable_params())
    # per LSTM layer: 4 gates x hidden x (layer input + hidden) weights + two bias vectors; dense hidden x 11 + 11
    formula = (4 * 512 * (192 + 512) + 2 * 4 * 512) + (4 * 512 * (512 + 512) + 2 * 4 * 512) + 512 * 11 + 11
    assert counted == formula == 3_552_779


def test_ascend_variant_runs_lstm_in_float16_with_float32_dense():
    cfg = Config(hidden_size=32)
    ms.set_seed(3)
    net32 = create_network(cfg, "CPU")
    net16 = create_network(cfg, "Ascend")
    ms.load_param_into_net(net16, {p.name: p for p in net32.get_parameters()})
    rng = np.random.default_rng(2)
    columns = ms.Tensor(rng.standard_normal((160, 2, net16.input_size)).astype(np.float32))
    assert net16.lstm(columns)[0].dtype == ms.float16 and net32.lstm(columns)[0].dtype == ms.float32
    x = ms.Tensor(rng.standard_normal((2, 3, 64, 160)).astype(np.float32))
    out16, out32 = net16(x), net32(x)
    assert out16.dtype == ms.float32 and net16.fc.weight.dtype == ms.float32
    # Same weights: a float32 LSTM would give identical logits; float16 (eps ~1e-3, LSTM outputs
    # in (-1, 1)) leaves rounding differences of that order, and nothing larger.
    diff = np.abs(out16.asnumpy() - out32.asnumpy()).max()
    assert 1e-6 < diff < 1e-2


def test_ctc_loss_equals_numpy_forward_algorithm():
    T, labels = 12, ["7", "11", "305", "9999"]     # repeats need a blank between them
    logits = np.random.default_rng(4).standard_normal((T, len(labels), NUM_CLASSES)).astype(np.float32)
    coded = np.stack([encode_label(s) for s in labels])
    loss = CTCLoss(CaptchaSpec(width=T), batch_size=len(labels), sequence_length=T)(ms.Tensor(logits), ms.Tensor(coded))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = np.mean([ctc_reference(log_probs[:, i], [int(c) for c in s], BLANK) for i, s in enumerate(labels)])
    np.testing.assert_allclose(float(loss.asnumpy()), expected, rtol=1e-4)


def test_ctc_loss_network_and_confidence_for_an_alphanumeric_alphabet():
    spec = CaptchaSpec(charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", width=10)
    labels = ["A", "ZZ", "B07", "XY9Q"]
    logits = np.random.default_rng(5).standard_normal((10, len(labels), spec.num_classes)).astype(np.float32)
    coded = np.stack([spec.encode(s) for s in labels])
    assert coded[1].tolist() == [35, 35, 36, 36]                   # blank = 36, the last class
    loss = CTCLoss(spec, batch_size=len(labels), sequence_length=10)(ms.Tensor(logits), ms.Tensor(coded))
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    nll = [ctc_reference(log_probs[:, i], [spec.charset.index(c) for c in s], blank=36) for i, s in enumerate(labels)]
    np.testing.assert_allclose(float(loss.asnumpy()), np.mean(nll), rtol=1e-4)
    # the spec's batched forward pass (predict's confidence) is the same likelihood
    from src.decode import ctc_log_likelihood
    ours = ctc_log_likelihood(log_probs.astype(np.float64), [spec.encode(s)[:len(s)] for s in labels], spec.blank)
    np.testing.assert_allclose(-ours, nll, rtol=1e-6)
    net = create_network(Config(hidden_size=16, charset=spec.charset, captcha_width=10))
    out = net(ms.Tensor(np.zeros((2, 3, 64, 10), np.float32)))
    assert out.shape == (10, 2, 37) and net.spec == spec


def test_lr_schedule_steps_down_before_epochs_10_20_30():
    lr = get_lr(epoch_size=30, step_size=5, lr_init=0.01)
    assert lr.shape == (150,) and lr.dtype == np.float32
    per_epoch = lr.reshape(30, 5)
    assert (per_epoch == per_epoch[:, :1]).all()
    expected = [0.01] * 9 + [0.001] * 10 + [0.0001] * 10 + [0.00001]
    np.testing.assert_allclose(per_epoch[:, 0], expected, rtol=1e-5)
    with pytest.raises(ValueError):
        get_lr(0, 5, 0.01)


def weights(net):
    return [p.asnumpy().astype(np.float64) for p in net.trainable_params()]


@pytest.mark.parametrize("sens, expect_clipped", [(1e6, True), (1e-3, False)])
def test_update_is_lr_times_gradient_clipped_to_global_norm_10(sens, expect_clipped):
    """Plain SGD: the step moves the weights by -lr * g, with g scaled to norm 10 only when it is longer."""
    ms.set_seed(5)
    net = StackedRNN(input_size=192, hidden_size=16)
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.standard_normal((4, 3, 64, 160)).astype(np.float32))
    y = ms.Tensor(np.stack([encode_label(s) for s in ("1", "23", "456", "7890")]))
    loss_cell = nn.WithLossCell(net, CTCLoss(DIGITS, 4, 160))
    # The cell back-propagates sens instead of 1, so its gradient is sens times the loss's.
    _, grads = ms.value_and_grad(loss_cell, None, net.trainable_params())(x, y)
    grads = [sens * g.asnumpy().astype(np.float64) for g in grads]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    assert (norm > 10.0) == expect_clipped
    scale = 10.0 / norm if expect_clipped else 1.0
    lr = 0.5
    opt = nn.SGD(net.trainable_params(), learning_rate=lr, momentum=0.0)
    cell = TrainOneStepCellWithGradClip(loss_cell, opt, clip_norm=10.0, sens=sens)
    before = weights(net)
    cell(x, y)
    for param, old, new, grad in zip(net.trainable_params(), before, weights(net), grads):
        # atol: float32 rounding of weights below 1 in magnitude.
        np.testing.assert_allclose(new - old, -lr * scale * grad, rtol=1e-5, atol=1e-7, err_msg=param.name)


def test_cosine_schedule_with_warmup():
    lr = get_lr(epoch_size=2, step_size=50, lr_init=0.002, schedule="cosine", warmup_steps=10)
    assert lr.shape == (100,)
    np.testing.assert_allclose(lr[:10], 0.002 * 0.5 * (1 + np.cos(np.pi * np.arange(10) / 100)) *
                               (np.arange(10) + 1) / 10, rtol=1e-5)
    assert lr[10] == pytest.approx(0.002 * 0.5 * (1 + np.cos(np.pi * 10 / 100)), rel=1e-5)
    assert np.all(np.diff(lr[10:]) < 0) and 0 < lr[-1] < 1e-5
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        get_lr(1, 1, 0.1, schedule="linear")


def test_train_steps_cut_the_step_schedule_and_span_the_cosine():
    # --train_steps 47 at 5 steps/epoch: the original schedule, cut after step 47 ...
    np.testing.assert_array_equal(get_lr(30, 5, 0.01, total_steps=47), get_lr(30, 5, 0.01)[:47])
    np.testing.assert_allclose(get_lr(3, 5, 0.01, total_steps=47)[40:], [0.01] * 5 + [0.001] * 2, rtol=1e-6)   # past epoch_size
    # ... and a cosine that ends at its last step, not at the end of an epoch.
    lr = get_lr(2, 50, 0.001, schedule="cosine", warmup_steps=10, total_steps=137)
    np.testing.assert_allclose(lr[10:], 0.001 * 0.5 * (1 + np.cos(np.pi * np.arange(10, 137) / 137)), rtol=1e-5)
    assert lr.shape == (137,) and 0 < lr[-1] < 1e-6
    with pytest.raises(ValueError, match="total_steps >= 0"):
        get_lr(1, 5, 0.01, total_steps=-1)
