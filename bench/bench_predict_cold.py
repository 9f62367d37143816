"""Cold wall time of reading one captcha with predict.py: the MindSpore path against --backend onnxruntime.

Each run is a fresh process (imports included), as a user's command is. The onnxruntime cache is
filled once first (that run exports the ONNX files and imports MindSpore), then both paths are
timed ``--repeats`` times, alternating, on the same image; medians are printed.

    python bench/bench_predict_cold.py --checkpoint_path pretrained/crnn_digits.ckpt pretrained/warpctc.ckpt
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model  # noqa: E402
from src.cli import report_error  # noqa: E402


def wall(command) -> float:
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, command[:4]))} ...: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_path", nargs="+", default=[os.path.join(REPO, "pretrained", "crnn_digits.ckpt")])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each path (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        missing = [p for p in args.checkpoint_path if not os.path.isfile(p)]
        if missing:
            raise ValueError(f"--checkpoint_path {missing[0]}: no such file")
        if args.repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
        from src.captcha_spec import CaptchaSpec
        from src.data.render import Renderer

        work = tempfile.mkdtemp(prefix="bench_predict_cold_")
        image = os.path.join(work, "0427.png")
        Renderer(CaptchaSpec()).render("0427", "bench-predict-cold").save(image)
        cache = os.path.join(work, "onnx")
        predict = [sys.executable, os.path.join(REPO, "predict.py"), "--quiet"]
        print(f"cpu: {cpu_model()}\none image, {args.repeats} fresh processes per path, median wall time")
        for checkpoint in args.checkpoint_path:
            onnx = predict + ["--checkpoint_path", checkpoint, "--backend", "onnxruntime", "--onnx_cache", cache, image]
            plain = predict + ["--checkpoint_path", checkpoint, image]
            export = wall(onnx)
            times = {"mindspore": [], "onnxruntime": []}
            for _ in range(args.repeats):
                times["mindspore"].append(wall(plain))
                times["onnxruntime"].append(wall(onnx))
            ms, ort = statistics.median(times["mindspore"]), statistics.median(times["onnxruntime"])
            print(f"{os.path.basename(checkpoint)}: mindspore {ms:.2f} s, onnxruntime {ort:.2f} s "
                  f"({ms / ort:.1f}x faster; the first onnxruntime run, which exports, {export:.2f} s)")
    except (ValueError, RuntimeError) as err:
        return report_error("bench_predict_cold.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
