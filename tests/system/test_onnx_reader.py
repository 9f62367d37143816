"""predict.py --backend onnxruntime: the numpy preprocessing equals the MindSpore pipeline's, every release
reads the same texts and confidences both ways, and a cached checkpoint is read without importing MindSpore."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import process_data
from src.captcha_spec import CaptchaSpec
from conftest import REPO, run_py

PREDICT = os.path.join(REPO, "predict.py")
RELEASES = sorted(n for n in os.listdir(os.path.join(REPO, "pretrained")) if n.endswith(".ckpt"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Fresh captchas at the original size, plus copies at three other sizes (wider, smaller, taller)."""
    root = tmp_path_factory.mktemp("onnx_reader")
    process_data.render_split(str(root), 12, seed=20261207, split="fresh", workers=2, progress=False)
    names = sorted(n for n in os.listdir(root) if n.endswith(".png"))
    for number, (width, height) in enumerate([(200, 50), (120, 40), (150, 90)]):
        with Image.open(root / names[number]) as handle:
            handle.convert("RGB").resize((width, height), Image.BICUBIC).save(root / f"z{number}-{width}x{height}.png")
    return root


@pytest.mark.parametrize("normalization", ["fixed", "per_image"])
@pytest.mark.parametrize("resize", ["stretch", "keep_aspect"])
def test_numpy_preprocessing_equals_the_mindspore_pipeline(images, normalization, resize):
    from mindspore.dataset.transforms import Compose

    from src.data.images import load_bgr
    from src.dataset import image_transforms
    from src.serve.onnx_reader import network_input

    spec = CaptchaSpec(width=256, normalization=normalization, resize=resize)
    pipeline = Compose(image_transforms(spec))
    for name in sorted(n for n in os.listdir(images) if n.endswith(".png")):
        bgr = load_bgr(str(images / name))
        np.testing.assert_allclose(network_input(bgr, spec), pipeline(bgr), rtol=0, atol=2e-5, err_msg=name)


def _rows(stdout):
    return [line.split("\t") for line in stdout.splitlines()]


@pytest.mark.parametrize("release", RELEASES)
def test_every_release_reads_the_same_through_onnxruntime(images, tmp_path, release):
    ckpt = os.path.join(REPO, "pretrained", release)
    extra = ["--read_charset", "0123456789"] if release == "crnn_universal.ckpt" else []
    mindspore = run_py([PREDICT, "--checkpoint_path", ckpt, "--quiet", *extra, images])
    assert mindspore.returncode == 0, mindspore.stderr[-2000:]
    cache = tmp_path / "cache"
    first = run_py([PREDICT, "--checkpoint_path", ckpt, "--backend", "onnxruntime", "--onnx_cache", cache, *extra,
                    images])
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout == mindspore.stdout      # texts and confidences (4 decimals) alike
    assert sum(text == name.split("-", 1)[1][:-4] for name, text, _ in
               ((os.path.basename(p), t, c) for p, t, c in _rows(first.stdout)) if not name.startswith("z")) >= 6
    # Cached now: the second run never imports MindSpore, and reads the same.
    code = ("import sys, predict; status = predict.main(sys.argv[1:]); "
            "print('mindspore imported' if 'mindspore' in sys.modules else 'no mindspore', file=sys.stderr); "
            "sys.exit(status)")
    second = subprocess.run([sys.executable, "-c", code, "--checkpoint_path", ckpt, "--backend", "onnxruntime",
                             "--onnx_cache", str(cache), *extra, str(images)],
                            cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                            timeout=300)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout == mindspore.stdout
    assert second.stderr.strip().splitlines()[-1] == "no mindspore", second.stderr[-2000:]


def test_onnxruntime_predict_checks_what_the_mindspore_path_checks(images, tmp_path):
    ckpt = os.path.join(REPO, "pretrained", "warpctc.ckpt")
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, "--backend", "onnxruntime", "--onnx_cache", tmp_path,
                   "--charset", "0123456789AB", images])
    assert proc.returncode == 2 and "--charset '0123456789AB' conflicts with the checkpoint's" in proc.stderr
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, "--backend", "onnxruntime", "--onnx_cache", tmp_path,
                   "--max_pixels", "5000", images])
    assert proc.returncode == 2 and "over --max_pixels 5,000" in proc.stderr
    assert proc.stdout == ""
