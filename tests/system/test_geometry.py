"""Captchas of any size and length: the keep_aspect resize, <label>.<ext> names, folders mixing sizes and
lengths, through train, eval, predict, serve and the ONNX export; fine-tuning that works out the alphabet,
length and width from a folder."""
import base64
import json
import os
import random

import numpy as np
import pytest
from PIL import Image

from src.captcha_spec import CaptchaSpec
from src.checkpoint.model import load_network
from src.config import Config
from src.data.labels import list_samples
from src.dataset import KeepAspectFit, image_transforms
from src.data.render import Renderer, RenderStyle
from conftest import REPO, bilinear, last_error_line, run_py
from tests.system.test_serve import Server

TRAIN, EVAL, PREDICT, EXPORT = (os.path.join(REPO, f"{name}.py") for name in ("train", "eval", "predict", "export"))
ALNUM = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# A keep_aspect crnn over a 32-pixel-high, 128-wide canvas: 32 CTC steps, room for 8 characters.
GEOMETRY = ["--network", "crnn", "--crnn_channels", "8,16,16,16", "--crnn_hidden_size", "16", "--batch_size", "16",
            "--resize", "keep_aspect", "--normalization", "per_image", "--captcha_width", "128",
            "--captcha_height", "32", "--max_captcha_digits", "8", "--charset", ALNUM]
SIZES = ((100, 30), (160, 64), (200, 50), (300, 80))


def render_folder(folder, count, sizes, lengths, charset, seed, names="label"):
    """``count`` captchas, drawn by the captcha package at each of ``sizes`` in turn, of ``lengths``, named
    ``<label>.png`` (or ``<index>-<label>.png``); returns ``{path: label}``."""
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    renderers = {size: Renderer(CaptchaSpec(charset=charset, max_length=max(lengths), width=size[0],
                                            height=size[1]), RenderStyle(font_sizes=(min(56, 2 * size[1]),)))
                 for size in sizes}
    written = {}
    for index in range(count):
        label = "".join(rng.choice(charset) for _ in range(rng.choice(lengths)))
        while label in written.values():
            label = "".join(rng.choice(charset) for _ in range(rng.choice(lengths)))
        name = f"{label}.png" if names == "label" else f"{index:03d}-{label}.png"
        path = os.path.join(folder, name)
        renderers[sizes[index % len(sizes)]].render(label, f"geometry-{seed}-{index}").save(path)
        written[path] = label
    return written


def test_keep_aspect_fits_without_distortion_and_fills_with_the_border():
    fit = KeepAspectFit(32, 128)
    assert fit.placement(50, 200) == (32, 128, 0)          # 4:1 fills the canvas
    assert fit.placement(64, 160) == (32, 80, 0)           # 2.5:1: full height, 48 columns of fill
    assert fit.placement(30, 400) == (10, 128, 11)         # wider than 4:1: full width, centred vertically
    image = np.asarray(Renderer(CaptchaSpec(width=160, height=64)).render("0731", "fit"), np.float32)
    out = fit(image)
    scaled = bilinear(image.astype(np.float64), 32, 80)
    np.testing.assert_allclose(out[:, :80], scaled, atol=0.02 * 255)
    border = np.concatenate([out[0, :80], out[-1, :80], out[:, 0], out[:, 79]]).mean(axis=0)
    np.testing.assert_allclose(out[:, 80:], np.broadcast_to(border, (32, 48, 3)), atol=0.5)
    # The default stays the original's stretch.
    assert CaptchaSpec().resize == "stretch"
    spec = CaptchaSpec(resize="keep_aspect")
    assert CaptchaSpec.from_json(spec.to_json()) == spec and "resize" not in CaptchaSpec().to_json()
    with pytest.raises(ValueError, match="--resize must be one of stretch, keep_aspect, got 'crop'"):
        CaptchaSpec(resize="crop")


def test_label_names_and_mixed_lengths_load_and_a_bad_name_is_one_line(tmp_path):
    written = render_folder(tmp_path / "mixed", 12, SIZES, (1, 4, 6, 8), ALNUM, seed=3)
    spec = CaptchaSpec(charset=ALNUM, max_length=8, width=128, height=32, normalization="per_image",
                       resize="keep_aspect")
    assert dict(list_samples(str(tmp_path / "mixed"), spec)) == {str(p): label for p, label in written.items()}
    from mindspore.dataset.transforms import Compose
    compose = Compose(image_transforms(spec))
    for path in written:
        with Image.open(path) as handle:
            x = compose(np.asarray(handle.convert("RGB"))[:, :, ::-1])
        assert x.shape == (3, 32, 128)
    render_folder(tmp_path / "bad", 4, SIZES, (4,), "0123456789", seed=5)
    Image.new("RGB", (120, 40), "white").save(tmp_path / "bad" / "IMG 7.png")
    proc = run_py([EVAL, "--dataset_path", tmp_path / "bad", "--checkpoint_path",
                   os.path.join(REPO, "pretrained", "crnn_digits.ckpt")])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc).startswith(f"eval.py: error: {tmp_path / 'bad' / 'IMG 7.png'}: label 'IMG 7'")
    assert "neither <label>.<ext> nor <index>-<label>.<ext>" in last_error_line(proc)


@pytest.fixture(scope="module")
def geometry_model(tmp_path_factory):
    """A tiny keep_aspect crnn trained on a folder of <label>.png captchas of four sizes and lengths 1-8."""
    work = tmp_path_factory.mktemp("geometry")
    render_folder(work / "train", 48, SIZES, tuple(range(1, 9)), ALNUM, seed=1)
    test = render_folder(work / "test", 16, SIZES, tuple(range(1, 9)), ALNUM, seed=2)
    proc = run_py([TRAIN, "--dataset_path", work / "train", *GEOMETRY, "--epoch_size", "2", "--optimizer", "adam",
                   "--learning_rate", "0.003"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = work / "checkpoint" / "crnn-2_3.ckpt"
    assert ckpt.is_file(), sorted(os.listdir(work / "checkpoint"))
    return work, ckpt, test


def test_any_size_reads_the_same_through_eval_predict_serve_and_onnx(geometry_model, tmp_path):
    work, ckpt, test = geometry_model
    net, spec = load_network(str(ckpt), Config())
    assert spec.resize == "keep_aspect" and spec.max_length == 8 and net.sequence_length == 32
    proc = run_py([EVAL, "--dataset_path", work / "test", "--checkpoint_path", ckpt, "--quiet"])
    assert proc.returncode == 0 and "evaluated 16 images" in proc.stdout, proc.stderr[-2000:]
    paths = sorted(str(p) for p in test)
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, "--quiet", *paths])
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [p for p, _, _ in predicted] == paths

    # The server answers predict.py's texts and confidences for images of every size.
    server = Server("--checkpoint_path", ckpt, "--max_batch", "4")
    try:
        encoded = [base64.b64encode(open(p, "rb").read()).decode() for p in paths]
        results = server.post("/predict", json={"images": encoded}).json()["results"]
    finally:
        server.stop()
    assert [r["text"] for r in results] == [text for _, text, _ in predicted]
    assert [round(r["confidence"], 4) for r in results] == [float(c) for _, _, c in predicted]

    # The ONNX export, run by someone with only its JSON: the keep_aspect steps as the JSON states them.
    ort = pytest.importorskip("onnxruntime")
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "geo", "--file_format", "ONNX",
                   "--export_batch_size", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "geo.onnx.json").read_text(encoding="utf-8"))
    resize = info["input"]["resize"]
    assert resize["mode"] == "keep_aspect" and (resize["height"], resize["width"]) == (32, 128)
    assert any("aspect" in step or "canvas" in step for step in info["input"]["preprocess"])
    session = ort.InferenceSession(str(tmp_path / "geo.onnx"))
    texts = []
    for path in paths:
        with Image.open(path) as handle:
            x = np.asarray(handle.convert("RGB"), np.float64)[:, :, ::-1] * info["input"]["rescale"]
        x = (x - x.mean(axis=(0, 1))) / np.maximum(x.std(axis=(0, 1)), info["input"]["std_floor"])
        scale = min(32 / x.shape[0], 128 / x.shape[1])
        high, wide = min(32, max(1, round(x.shape[0] * scale))), min(128, max(1, round(x.shape[1] * scale)))
        x = bilinear(x, high, wide)
        canvas = np.empty((32, 128, 3))
        canvas[...] = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]).mean(axis=0)
        top = (32 - high) // 2
        canvas[top:top + high, :wide] = x
        (out,) = session.run(None, {session.get_inputs()[0].name: canvas.transpose(2, 0, 1)[None].astype(np.float32)})
        seq = out[:, 0].argmax(-1)
        kept = [c for i, c in enumerate(seq) if c != info["blank_index"] and (i == 0 or c != seq[i - 1])]
        texts.append("".join(info["charset"][c] for c in kept))
    assert texts == [text for _, text, _ in predicted]


def test_finetuning_works_out_alphabet_length_and_width_from_the_folder(geometry_model, tmp_path):
    _, base, _ = geometry_model
    # Real captchas as public sets hold them: 5 lowercase letters and digits, 300x50, named <label>.png.
    charset = "2345678bcdefgmnpwxy"
    render_folder(tmp_path / "mine", 32, ((300, 50),), (5,), charset, seed=4)
    # A base that reads with a prior on its texts' classes, as the universal release does: the prior is for
    # the base's texts, so the new model (trained on the folder's) does not inherit it.
    proc = run_py([EXPORT, "--checkpoint_path", base, "--file_format", "CKPT", "--file_name", tmp_path / "base",
                   "--read_classes", "digits,lower,upper,all"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert load_network(str(tmp_path / "base.ckpt"), Config())[1].read_classes == "digits,lower,upper,all"
    # Told the alphabet, the prior for captchas of an unknown one is off unless given too.
    _, told = load_network(str(tmp_path / "base.ckpt"), Config(read_charset="0123"), given=["read_charset"])
    assert (told.read_charset, told.read_classes) == ("0123", "")
    common = ["--dataset_path", tmp_path / "mine", "--init_checkpoint", tmp_path / "base.ckpt", "--train_steps", "2",
              "--batch_size", "16"]
    proc = run_py([TRAIN, *common, "--save_checkpoint_path", tmp_path / "inferred"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    used = sorted({c for name in os.listdir(tmp_path / "mine") for c in name[:-4]})
    alphabet = "".join(c for c in ALNUM if c in used)
    line = next(l for l in proc.stdout.splitlines() if l.startswith("fine-tuning to "))
    assert line == (f"fine-tuning to {tmp_path / 'mine'}: alphabet {alphabet!r} ({len(alphabet)} characters, those "
                    "of its labels); 1-5 characters (its longest label); images 300x50, fitted with the aspect kept "
                    "into 192x32 (--charset, --max_captcha_digits and --captcha_width override)")
    _, spec = load_network(str(tmp_path / "inferred" / "crnn-1_2.ckpt"), Config())
    assert (spec.charset, spec.max_length, spec.width, spec.height) == (alphabet, 5, 192, 32)
    assert (spec.resize, spec.normalization) == ("keep_aspect", "per_image")      # the base's, not the defaults
    assert spec.read_classes == ""

    # An option given wins over what the folder says.
    proc = run_py([TRAIN, *common, "--max_captcha_digits", "7", "--captcha_width", "160", "--save_checkpoint_path",
                   tmp_path / "given"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    _, spec = load_network(str(tmp_path / "given" / "crnn-1_2.ckpt"), Config())
    assert (spec.charset, spec.max_length, spec.width) == (alphabet, 7, 160)
