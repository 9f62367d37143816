"""Greedy CTC decoding, exact-sequence accuracy and CER on hand-built logits."""
import numpy as np
import pytest

from src.dataset import BLANK, NUM_CLASSES, encode_label
from src.metric import (WarpCTCAccuracy, WarpCTCCharErrorRate, decode_with_confidence, edit_distance, greedy_decode,
                        summarize)

B = BLANK


def logits_for(*paths):
    """(T, B, C) one-hot scores whose argmax per step follows each path (same length T)."""
    T = len(paths[0])
    out = np.zeros((T, len(paths), NUM_CLASSES), dtype=np.float32)
    for b, path in enumerate(paths):
        for t, c in enumerate(path):
            out[t, b, c] = 5.0
    return out


def test_greedy_decode_collapses_repeats_and_drops_blanks():
    decoded = greedy_decode(logits_for(
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


def test_edit_distance_and_summary():
    assert edit_distance("", "123") == 3
    assert edit_distance("1234", "1243") == 2
    assert edit_distance("kitten", "sitting") == 3
    assert summarize(["12", "3"], ["12", "4"]) == {"WarpCTCAccuracy": 0.5, "CER": pytest.approx(1 / 3)}


def test_confidence_is_the_product_of_the_best_paths_step_probabilities():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 3.0, size=(12, 5, NUM_CLASSES)).astype(np.float32)
    decoded = decode_with_confidence(logits)
    assert [text for text, _ in decoded] == greedy_decode(logits)
    for b, (_, confidence) in enumerate(decoded):
        expected = 1.0
        for t in range(logits.shape[0]):
            probabilities = [np.exp(float(v)) for v in logits[t, b]]
            expected *= max(probabilities) / sum(probabilities)
        assert confidence == pytest.approx(expected, rel=1e-6)
        assert 0.0 <= confidence <= 1.0


def test_confidence_extremes_and_another_class_count():
    # Scores far beyond exp's range must still give a certain path, not inf/nan.
    (text, certain), = decode_with_confidence(logits_for([B, 4, 4, B, 2]) * 1000.0)
    assert (text, certain) == ("42", 1.0)
    # Equal scores: every step is a 1-in-C guess.
    T, C = 7, 5
    (_, guess), = decode_with_confidence(np.zeros((T, 1, C), dtype=np.float32), blank=C - 1)
    assert guess == pytest.approx((1 / C) ** T)
    # Nothing is tied to ten digits: five classes, blank 4.
    scores = np.full((4, 1, C), -5.0, dtype=np.float32)
    for t, c in enumerate([3, 4, 3, 3]):
        scores[t, 0, c] = 5.0
    assert decode_with_confidence(scores, blank=4)[0][0] == "33"
