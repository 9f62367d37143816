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
    Prediction). With ``spec.read_charset``, the other characters are never read. With
    ``spec.read_classes``, the text is the best of one greedy read per pool and the confidence its
    probability under that prior (:func:`_read_in_pools`).
    """
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or logits.shape[-1] != spec.num_classes:
        raise ValueError(f"logits of shape {logits.shape} do not fit {spec.num_classes} classes "
                         "(expected (T, B, C))")
    if spec.read_charset:
        # Dropped classes can be neither the argmax nor part of the text's probability.
        logits = np.where(_outside(spec, spec.read_charset), -np.inf, logits)
    log_probs = logits - _logsumexp(logits)
    if spec.read_classes:
        coded, log_confidence = _read_in_pools(spec, log_probs)
    else:
        coded = _best_paths(log_probs, spec.blank)
        log_confidence = ctc_log_likelihood(log_probs, coded, spec.blank)
    # Folded, the confidence stays that of the case the model read (a lower bound on the text's).
    return [(spec.folded("".join(spec.charset[c] for c in row)), float(np.exp(p)))
            for row, p in zip(coded, log_confidence)]


def _outside(spec: CaptchaSpec, characters: str) -> np.ndarray:
    """A mask of the classes that are neither one of ``characters`` nor the blank."""
    dropped = np.ones(spec.num_classes, dtype=bool)
    dropped[[spec.charset.index(c) for c in characters] + [spec.blank]] = False
    return dropped


def _best_paths(log_probs: np.ndarray, blank: int) -> List[np.ndarray]:
    """``(T, B, C)`` -> per sample the class indices of the best path: argmax per step, repeats merged,
    blanks dropped."""
    best = log_probs.argmax(axis=-1).T                                # (B, T)
    keep = np.ones_like(best, dtype=bool)
    keep[:, 1:] = best[:, 1:] != best[:, :-1]
    keep &= best != blank
    return [row[mask] for row, mask in zip(best, keep)]


def _read_in_pools(spec: CaptchaSpec, log_probs: np.ndarray) -> Tuple[List[np.ndarray], np.ndarray]:
    """The text of each sample under the prior that it keeps to one of ``spec.class_pools``, and the log of
    its probability under that prior.

    The model was trained on texts whose characters are uniform over the ``A`` characters it reads; a
    captcha's text is instead drawn from one pool ``q`` (weight ``w_q``, its share of the entries), so by
    Bayes a text ``s`` of ``n`` characters has ``P(s | image) ~ P_model(s | image) r(s)`` with
    ``r(s) = sum_{q holds s} w_q (A / |q|)^n``. Each pool's greedy read is a candidate; the best scored
    wins. ``r`` averages 1 over the training texts, so the normaliser is the candidates' ``P_model r`` plus
    the model's probability left to other texts, weighed 1. Reading only digits then costs a digit read
    little, while a single ``O`` among digits must be far likelier than ``0`` to stay ``O``.
    """
    entries = [pool for pool in spec.class_pools if pool]
    reads = len(spec.read_charset or spec.charset)
    classes = np.arange(spec.num_classes)
    pools = [(np.isin(classes, [spec.charset.index(c) for c in pool]), entries.count(pool) / len(entries), len(pool))
             for pool in dict.fromkeys(entries)]
    candidates: List[dict] = [{} for _ in range(log_probs.shape[1])]    # per sample: text -> (log P_model, log r)
    for held, _, _ in pools:
        rows = _best_paths(np.where(held | (classes == spec.blank), log_probs, -np.inf), spec.blank)
        for found, row, model in zip(candidates, rows, ctc_log_likelihood(log_probs, rows, spec.blank)):
            prior = sum(weight * (reads / size) ** len(row) for mask, weight, size in pools if mask[row].all())
            found[tuple(int(c) for c in row)] = (float(model), float(np.log(prior)))
    texts, log_confidence = [], []
    for found in candidates:
        text, (model, prior) = max(found.items(), key=lambda item: sum(item[1]))
        rest = max(0.0, 1.0 - sum(np.exp(m) for m, _ in found.values()))
        normaliser = sum(np.exp(m + p) for m, p in found.values()) + rest
        texts.append(np.array(text, dtype=np.int64))
        log_confidence.append(min(0.0, model + prior - np.log(normaliser)))
    return texts, np.array(log_confidence)


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
