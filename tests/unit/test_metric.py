"""Greedy CTC decoding, confidence, exact-sequence accuracy and CER on hand-built logits."""
import numpy as np
import pytest

from src.captcha_spec import CaptchaSpec
from src.metric import WarpCTCAccuracy, WarpCTCCharErrorRate, edit_distance
from src.decode import decode_with_confidence, greedy_decode

DIGITS = CaptchaSpec()
B = DIGITS.blank
NUM_CLASSES = DIGITS.num_classes
encode_label = DIGITS.encode


def logits_for(*paths):
    """(T, B, C) one-hot scores whose argmax per step follows each path (same length T)."""
    T = len(paths[0])
    out = np.zeros((T, len(paths), NUM_CLASSES), dtype=np.float32)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            out[t, b, c] = 5.0
    return out


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    decoded = greedy_decode(DIGITS, logits_for(
        [1, 1, B, 1, 2, 2, B, B],      # a blank splits the repeat: "112"
        [B, B, B, B, B, B, B, B],      # all blanks: ""
        [3, 3, 3, 3, 3, 3, 3, 3],      # one long run: "3"
        [B, 7, B, 0, B, 7, 7, B],      # "707"
    ))
    assert decoded == ["112", "", "3", "707"]


def test_accuracy_and_cer_with_padded_labels():
    logits = logits_for(
        [1, 1, B, 1, 2, B],   # "112" vs label "112": exact
        [4, B, 5, B, 6, 7],   # "4567" vs "456": too long by one
        [9, 9, 9, B, B, B],   # "9" vs "98": too short by one
        [B, B, B, B, B, B],   # "" vs "0": all blanks
    )
    labels = np.stack([encode_label(s) for s in ("112", "456", "98", "0")])   # padded with BLANK
    acc, cer = WarpCTCAccuracy(), WarpCTCCharErrorRate()
    for metric in (acc, cer):
        metric.update(logits, labels)
    assert acc.eval() == pytest.approx(0.25)
    assert cer.eval() == pytest.approx((0 + 1 + 1 + 1) / (3 + 3 + 2 + 1))
    assert acc.accuracy_by_length() == {1: 0.0, 2: 0.0, 3: 0.5}
    acc.clear()
    with pytest.raises(RuntimeError, match="no samples"):
        acc.eval()


def test_edit_distance():
    assert edit_distance("", "123") == 3
    assert edit_distance("1234", "1243") == 2
    assert edit_distance("kitten", "sitting") == 3


def test_confidence_extremes_and_another_class_count():
    # Scores far beyond exp's range must still give a certain read, not inf/nan.
    (text, certain), = decode_with_confidence(DIGITS, logits_for([B, 4, 4, B, 2]) * 1000.0)
    assert (text, certain) == ("42", 1.0)
    # Nothing is tied to ten digits: four characters, blank 4.
    spec = CaptchaSpec(charset="wxyz", max_length=2, width=4)
    scores = np.full((4, 1, 5), -5.0, dtype=np.float32)
    for t, c in enumerate([3, 4, 3, 3]):
        scores[t, 0, c] = 5.0
    assert decode_with_confidence(spec, scores)[0][0] == "zz"


def test_metrics_decode_with_their_spec():
    spec = CaptchaSpec(charset="ABC", max_length=3, width=6)
    logits = np.zeros((6, 2, 4), dtype=np.float32)
    for b, path in enumerate([[0, 3, 0, 1, 1, 3], [2, 2, 3, 3, 3, 3]]):
        for t, c in enumerate(path):
            logits[t, b, c] = 5.0
    labels = np.stack([spec.encode("AAB"), spec.encode("CA")])
    acc, cer = WarpCTCAccuracy(spec), WarpCTCCharErrorRate(spec)
    for metric in (acc, cer):
        metric.update(logits, labels)
    assert acc.eval() == 0.5 and cer.eval() == pytest.approx(1 / 5)
