"""Read images with ddddocr's default model: paths on stdin (one a line), a JSON list of texts on stdout.

Run in ddddocr's own virtual environment (bench/requirements-ddddocr.txt), by bench/bench_universal.py.
"""
import json
import sys

import ddddocr


def main() -> int:
    ocr = ddddocr.DdddOcr(show_ad=False)
    texts = []
    for path in sys.stdin.read().splitlines():
        with open(path, "rb") as handle:
            texts.append(ocr.classification(handle.read()))
    json.dump(texts, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
