"""The WarpCTC metrics: exact-sequence accuracy and character error rate of greedy CTC reads.

Decoding is ``src.decode.greedy_decode``: the metrics only compare strings.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
from mindspore.train import Metric

from src.captcha_spec import CaptchaSpec
from src.decode import greedy_decode


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

    def __init__(self, spec: Optional[CaptchaSpec] = None):
        super().__init__()
        self.spec = spec or CaptchaSpec()
        self.clear()

    def update(self, *inputs):
        if len(inputs) != 2:
            raise ValueError(f"{type(self).__name__}.update expects (logits, label), got {len(inputs)} inputs")
        predictions = greedy_decode(self.spec, _as_numpy(inputs[0]))
        labels = [self.spec.decode(row) for row in _as_numpy(inputs[1])]
        for predicted, label in zip(predictions, labels):
            self._add(predicted, label)

    def _add(self, predicted: str, label: str) -> None:
        raise NotImplementedError


class WarpCTCAccuracy(_DecodingMetric):
    """Fraction of images whose decoded text equals the label exactly; also kept per label length."""

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
