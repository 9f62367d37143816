"""Network outputs -> texts: greedy CTC decoding, and the confidence of each read (its CTC probability).

The class coding (which class is which character, the blank) is the :class:`CaptchaSpec`'s.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from src.captcha_spec import CaptchaSpec


def greedy_decode(spec: CaptchaSpec, logits: np.ndarray) -> List[str]:
    """``(T, B, C)`` scores -> B strings: argmax per step, collapse repeats, drop blanks."""
    return [text for text, _ in decode_with_confidence(spec, logits)]


def decode_with_confidence(spec: CaptchaSpec, logits: np.ndarray) -> List[Tuple[str, float]]:
    """Greedy CTC decoding plus a confidence in [0, 1] per sample.

    The confidence is ``P(text | image)`` under the model: the CTC probability of the decoded
    text, summed over every alignment that spells it (the CTC forward algorithm). Unlike the
    best path's own probability, it does not fall just because a character's edges are
    uncertain or a label is long, so it separates right from wrong reads well (README,
    Prediction). With ``spec.read_charset``, the other characters are never read.
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or logits.shape[-1] != spec.num_classes:
        raise ValueError(f"logits of shape {logits.shape} do not fit {spec.num_classes} classes "
                         "(expected (T, B, C))")
    if spec.read_charset:
        # Dropped classes can be neither the argmax nor part of the text's probability.
        dropped = np.ones(spec.num_classes, dtype=bool)
        dropped[[spec.charset.index(c) for c in spec.read_charset] + [spec.blank]] = False
        logits = np.where(dropped, -np.inf, logits)
    best = logits.argmax(axis=-1).T                                   # (B, T)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != spec.blank
    coded = [row[mask] for row, mask in zip(best, keep)]
    log_probs = logits - _logsumexp(logits)
    confidence = np.exp(ctc_log_likelihood(log_probs, coded, spec.blank))
    # Folded, the confidence stays that of the case the model read (a lower bound on the text's).
    return [(spec.folded("".join(spec.charset[c] for c in row)), float(p)) for row, p in zip(coded, confidence)]


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=-1, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def ctc_log_likelihood(log_probs: np.ndarray, labels: Sequence[Sequence[int]], blank: int) -> np.ndarray:
    """``log P(label | input)`` per sample by the CTC forward algorithm, batched over samples.

    ``log_probs`` is ``(T, B, C)`` log-softmax output; ``labels[b]`` the class indices of sample
    ``b`` (no blanks; may be empty). Standard CTC: repeated characters need a blank between them.
    """
    steps, batch, _ = log_probs.shape
    lengths = np.array([len(label) for label in labels])
    states = 2 * int(lengths.max(initial=0)) + 1
    ext = np.full((batch, states), blank, dtype=np.int64)           # blank, c1, blank, c2, ..., blank
    for b, label in enumerate(labels):
        ext[b, 1:2 * len(label):2] = label
    valid = np.arange(states)[None, :] < (2 * lengths + 1)[:, None]
    skip = np.zeros((batch, states), dtype=bool)                     # may jump over a blank to here
    skip[:, 2:] = (ext[:, 2:] != blank) & (ext[:, 2:] != ext[:, :-2])
    emit = np.take_along_axis(log_probs, np.broadcast_to(ext, (steps, batch, states)), axis=2)
    alpha = np.full((batch, states), -np.inf)
    alpha[:, 0] = emit[0, :, 0]
    if states > 1:
        alpha[:, 1] = np.where(lengths > 0, emit[0, :, 1], -np.inf)
    pad = np.full((batch, 2), -np.inf)
    for t in range(1, steps):
        shifted = np.concatenate([pad, alpha], axis=1)
        paths = np.logaddexp(alpha, shifted[:, 1:-1])
        paths = np.logaddexp(paths, np.where(skip, shifted[:, :-2], -np.inf))
        alpha = np.where(valid, paths + emit[t], -np.inf)
    rows = np.arange(batch)
    last = alpha[rows, 2 * lengths]
    before = np.where(lengths > 0, alpha[rows, np.maximum(2 * lengths - 1, 0)], -np.inf)
    return np.logaddexp(last, before)
