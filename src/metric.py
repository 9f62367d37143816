"""Greedy CTC decoding and the WarpCTC metrics: exact-sequence accuracy and character error rate."""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
from mindspore.train import Metric

from src.dataset import BLANK, decode_label


def greedy_decode(logits: np.ndarray, blank: int = BLANK) -> List[str]:
    """``(T, B, C)`` scores -> B digit strings: argmax per step, collapse repeats, drop blanks."""
    best = np.asarray(logits).argmax(axis=-1).T                      # (B, T)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]                        # first of each run
    keep &= best != blank
    return ["".join(str(int(c)) for c in row[mask]) for row, mask in zip(best, keep)]


def decode_with_confidence(logits: np.ndarray, blank: int = BLANK) -> List[Tuple[str, float]]:
    """``(T, B, C)`` scores -> B ``(text, confidence)`` pairs; the text is :func:`greedy_decode`'s.

    The confidence is the probability of the best path: the product over the T time steps of
    the largest softmax probability at that step (blank steps included), a number in [0, 1].
    """
    scores = np.asarray(logits, dtype=np.float64)
    # log of the largest softmax probability = -log(sum(exp(s - max))): no overflow for large scores
    log_best = -np.log(np.exp(scores - scores.max(axis=-1, keepdims=True)).sum(axis=-1))   # (T, B)
    confidences = np.exp(log_best.sum(axis=0))
    return list(zip(greedy_decode(logits, blank), (float(c) for c in confidences)))


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions cost 1)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _as_numpy(value) -> np.ndarray:
    return value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)


class _DecodingMetric(Metric):
    """Shared ``update(logits, label)``: decode predictions and labels, hand them to ``_add``."""

    def __init__(self):
        super().__init__()
        self.clear()

    def update(self, *inputs):
        if len(inputs) != 2:
            raise ValueError(f"{type(self).__name__}.update expects (logits, label), got {len(inputs)} inputs")
        predictions = greedy_decode(_as_numpy(inputs[0]))
        labels = [decode_label(row) for row in _as_numpy(inputs[1])]
        for predicted, label in zip(predictions, labels):
            self._add(predicted, label)

    def _add(self, predicted: str, label: str) -> None:
        raise NotImplementedError


class WarpCTCAccuracy(_DecodingMetric):
    """Fraction of images whose decoded digits equal the label exactly; also kept per label length."""

    def clear(self):
        self._correct = 0
        self._total = 0
        self.by_length: Dict[int, List[int]] = {}

    def _add(self, predicted: str, label: str) -> None:
        hit = int(predicted == label)
        self._correct += hit
        self._total += 1
        counts = self.by_length.setdefault(len(label), [0, 0])
        counts[0] += hit
        counts[1] += 1

    def eval(self) -> float:
        if self._total == 0:
            raise RuntimeError("WarpCTCAccuracy: no samples were evaluated")
        return self._correct / self._total

    def accuracy_by_length(self) -> Dict[int, float]:
        return {length: hits / total for length, (hits, total) in sorted(self.by_length.items())}


class WarpCTCCharErrorRate(_DecodingMetric):
    """Character error rate: total edit distance / total label characters."""

    def clear(self):
        self._edits = 0
        self._chars = 0

    def _add(self, predicted: str, label: str) -> None:
        self._edits += edit_distance(predicted, label)
        self._chars += len(label)

    def eval(self) -> float:
        if self._chars == 0:
            raise RuntimeError("WarpCTCCharErrorRate: no samples were evaluated")
        return self._edits / self._chars


def summarize(predictions: Sequence[str], labels: Sequence[str]) -> Dict[str, float]:
    """Both metrics for already-decoded strings (used to cross-check predict.py against eval)."""
    acc, cer = WarpCTCAccuracy(), WarpCTCCharErrorRate()
    for p, l in zip(predictions, labels):
        acc._add(p, l)
        cer._add(p, l)
    return {"WarpCTCAccuracy": acc.eval(), "CER": cer.eval()}
