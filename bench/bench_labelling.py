"""How the labelling store scales: start and save times on a folder of many images.

Makes a folder of ``--images`` small PNGs (one captcha's bytes, copied), half of them labelled in
its labels.tsv, then times, on this machine:

- opening the folder (``LabelStore``: listing, checking the names, reading labels.tsv);
- ``--saves`` saves of new labels (each on disk, fsynced, before it returns), median and worst;
- for comparison, one full parse of the same labels.tsv, which every save used to cost;
- with ``--checkpoint_path``, serve.py's start until ``/label/next`` answers, and until the model has
  read the whole folder in the background.

    python bench/bench_labelling.py --images 50000
    python bench/bench_labelling.py --images 50000 --checkpoint_path pretrained/crnn_digits.ckpt
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from bench.common import cpu_model, free_port  # noqa: E402
from src.captcha_spec import CaptchaSpec  # noqa: E402
from src.cli import report_error  # noqa: E402


def make_folder(folder: str, count: int) -> None:
    """``count`` PNGs of one rendered captcha, the first half labelled in labels.tsv (labelling format)."""
    from src.data.labels import LABELLING_HEADER
    from src.data.render import Renderer

    os.makedirs(folder)
    sample = os.path.join(folder, "sample.png")
    Renderer(CaptchaSpec()).render("1234", "bench-labelling").save(sample)
    data = open(sample, "rb").read()
    os.remove(sample)
    lines = [LABELLING_HEADER + "\n"]
    for index in range(count):
        name = f"img{index:06d}.png"
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(data)
        if index < count // 2:
            lines.append(f"{name}\t{index % 10000:04d}\n")
    with open(os.path.join(folder, "labels.tsv"), "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def time_store(folder: str, saves: int) -> dict:
    from src.data.labels import parse_labels_text
    from src.serve.labelling import LabelStore

    started = time.perf_counter()
    store = LabelStore(folder, CaptchaSpec())
    opened = time.perf_counter() - started
    pending = store.pending()[:saves]
    times = []
    for name in pending:
        started = time.perf_counter()
        store.save(name, "1234")
        times.append(time.perf_counter() - started)
    path = os.path.join(folder, "labels.tsv")
    text = open(path, encoding="utf-8").read()
    started = time.perf_counter()
    parse_labels_text(folder, path, text, CaptchaSpec())
    parse = time.perf_counter() - started
    return {"open_s": opened, "save_ms_p50": 1000 * statistics.median(times), "save_ms_max": 1000 * max(times),
            "parse_ms": 1000 * parse, "labelled": store.counts()["labelled"]}


def time_server(folder: str, checkpoint: str) -> dict:
    import requests

    port = free_port()
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "serve.py"), "--checkpoint_path", checkpoint,
                             "--label_dir", folder, "--port", str(port), "--quiet"],
                            env={**os.environ, "PYTHONPATH": REPO}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    first = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve.py exited with {proc.returncode}: {proc.stderr.read()[-500:]}")
            try:
                if first is None:
                    requests.get(url + "/label/next", timeout=60).raise_for_status()
                    first = time.monotonic() - started
                if requests.get(url + "/label/status", timeout=60).json()["reading_done"]:
                    return {"first_next_s": first, "all_read_s": time.monotonic() - started}
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=50_000, help="images in the folder (default: %(default)s)")
    parser.add_argument("--saves", type=int, default=200, help="saves timed (default: %(default)s)")
    parser.add_argument("--checkpoint_path", help="also time serve.py's start on the folder with this model")
    args = parser.parse_args(argv)
    try:
        if args.images < 2 or args.saves < 1:
            raise ValueError("--images must be >= 2 and --saves >= 1")
        if args.checkpoint_path and not os.path.isfile(args.checkpoint_path):
            raise ValueError(f"--checkpoint_path {args.checkpoint_path}: no such file")
        work = tempfile.mkdtemp(prefix="bench_labelling_")
        try:
            folder = os.path.join(work, "folder")
            make_folder(folder, args.images)
            print(f"cpu: {cpu_model()}\n{args.images:,} images, {args.images // 2:,} labelled at the start")
            store = time_store(folder, min(args.saves, args.images - args.images // 2))
            print(f"open the folder: {store['open_s']:.2f} s")
            print(f"save a label: median {store['save_ms_p50']:.1f} ms, worst {store['save_ms_max']:.1f} ms "
                  f"(fsynced; {store['labelled']:,} labelled after)")
            print(f"one full parse of labels.tsv (each save's cost before): {store['parse_ms']:.0f} ms")
            if args.checkpoint_path:
                served = time_server(folder, args.checkpoint_path)
                print(f"serve.py start to /label/next: {served['first_next_s']:.1f} s; to every image read: "
                      f"{served['all_read_s']:.1f} s")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    except (ValueError, RuntimeError) as err:
        return report_error("bench_labelling.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
