"""Read images with ddddocr's default model: paths on stdin (one a line), a JSON list of texts on stdout.

With an argument (an alphabet), the model's scores of every other class are dropped before greedy
decoding, the strongest use of that knowledge (its own ``set_ranges`` only filters characters out
after decoding). Run in ddddocr's own virtual environment (bench/requirements-ddddocr.txt), by
bench/bench_universal.py.
"""
import json
import sys

import numpy as np

import ddddocr


def restricted_text(result: dict, alphabet: str) -> str:
    """Greedy CTC over the classes of ``alphabet`` and the blank ("" in ddddocr's charset)."""
    charset = result["charset"]
    probabilities = np.asarray(result["probabilities"], dtype=np.float64).reshape(-1, len(charset))
    allowed = np.array([c == "" or (len(c) == 1 and c in alphabet) for c in charset])
    best = np.where(allowed, probabilities, -1.0).argmax(axis=1)
    text, previous = [], None
    for index in best.tolist():
        if index != previous and charset[index] != "":
            text.append(charset[index])
        previous = index
    return "".join(text)


def main() -> int:
    alphabet = sys.argv[1] if len(sys.argv) > 1 else ""
    ocr = ddddocr.DdddOcr(show_ad=False)
    texts = []
    for path in sys.stdin.read().splitlines():
        with open(path, "rb") as handle:
            data = handle.read()
        if alphabet:
            texts.append(restricted_text(ocr.classification(data, probability=True), alphabet))
        else:
            texts.append(ocr.classification(data))
    json.dump(texts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
