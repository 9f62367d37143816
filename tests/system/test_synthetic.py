"""Captchas rendered on the fly: one renderer with process_data.py, a reproducible stream (seeds,
shards, resume), style options, and the per-image normalisation a checkpoint carries."""
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

import process_data
from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.data.images import load_bgr
from src.dataset import SyntheticSource, create_dataset, create_predict_dataset
from src.data.render import Renderer, RenderStyle, package_font_files, system_font_files
from src.decode import decode_with_confidence
from conftest import REPO, TINY, run_py

TRAIN, EVAL, EXPORT, PROCESS_DATA = (os.path.join(REPO, n) for n in ("train.py", "eval.py", "export.py",
                                                                     "process_data.py"))
DIGITS = CaptchaSpec()
# Every image-space option on, so that the stream tests cover the augmentations' seeding too.
AUGMENTED = dict(image_rotation=8.0, image_shear=0.2, image_wave=3.0, image_blur=1.0, color_jitter=0.3)


def stream(epochs=2, **config):
    """Every ``(images, labels)`` batch of ``epochs`` epochs of the on-the-fly training stream."""
    dataset = create_dataset(None, Config(**config))
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    return [batch for _ in range(epochs) for batch in iterator]


def same(a, b):
    return len(a) == len(b) and all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_default_style_draws_process_data_pixels_for_the_same_seed(tmp_path):
    names = process_data.render_split(str(tmp_path / "train"), 12, seed=1, split="train", progress=False)
    renderer = Renderer(DIGITS, RenderStyle.from_config(Config()))          # the config's defaults
    for index, name in enumerate(names):
        label = process_data.FILE_RE.match(name).group("label")
        drawn = renderer.render_bgr(label, process_data.image_seed(1, "train", index))
        assert np.array_equal(drawn, load_bgr(str(tmp_path / "train" / name))), name


def test_the_stream_is_a_pure_function_of_seed_and_position():
    config = dict(synthetic_images=24, batch_size=8, seed=3, num_parallel_workers=1, **AUGMENTED)
    first = stream(**config)
    assert len(first) == 6                                          # 3 steps per epoch, 2 epochs
    # Batch k holds global samples 8k..8k+7: the second epoch reads new ones, not the first again.
    source = SyntheticSource(Renderer(DIGITS, RenderStyle(**AUGMENTED)), seed=3, count=24)
    labels = [DIGITS.decode(row) for _, label in first for row in label]
    assert labels == [source.sample(g)[0] for g in range(48)]
    assert len(set(labels)) > 20
    assert same(stream(**config), first)
    assert same(stream(**{**config, "num_parallel_workers": 2}), first)   # threads render side by side
    other_seed = stream(**{**config, "seed": 4})
    assert not any(np.array_equal(a[0], b[0]) for a, b in zip(first, other_seed))


def test_label_classes_keep_each_label_to_one_pool_and_every_pool_is_drawn():
    spec = CaptchaSpec(charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", max_length=8,
                       width=256)
    source = SyntheticSource(Renderer(spec), seed=2, count=400, label_classes="digits,lower+digits,upper")
    labels = [source.sample(g)[0] for g in range(400)]
    kinds = {"digits": str.isdigit, "lower+digits": lambda c: c.isdigit() or c.islower(), "upper": str.isupper}
    assert all(any(all(map(test, label)) for test in kinds.values()) for label in labels)
    # Each pool is drawn, and within the mixed pool both classes appear (not one fixed class per pool).
    assert any(all(map(str.isdigit, label)) and len(label) >= 5 for label in labels)
    assert any(all(map(str.isupper, label)) and len(label) >= 5 for label in labels)
    assert any(any(map(str.islower, label)) and any(map(str.isdigit, label)) for label in labels)
    # Without pools, long labels mix the classes: what the option changes.
    plain = SyntheticSource(Renderer(spec), seed=2, count=400)
    mixed = [label for label in (plain.sample(g)[0] for g in range(400)) if len(label) >= 6]
    assert sum(not any(all(map(test, label)) for test in kinds.values()) for label in mixed) > 0.8 * len(mixed)
    # The training stream draws them: batches of the stream decode to labels of one pool.
    batches = stream(epochs=1, synthetic_images=16, batch_size=8, charset=spec.charset, max_captcha_digits=8,
                     captcha_width=256, label_classes="digits", num_parallel_workers=1)
    assert all(spec.decode(row).isdigit() for _, label in batches for row in label)


def test_shards_draw_disjoint_samples_that_together_make_the_single_shard_stream():
    whole = stream(epochs=1, synthetic_images=32, batch_size=8)
    shards = []
    for shard in range(2):
        dataset = create_dataset(None, Config(synthetic_images=32, batch_size=4), num_shards=2, shard_id=shard)
        shards.append(list(dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)))
    assert len(shards[0]) == len(shards[1]) == len(whole) == 4
    for step, (images, labels) in enumerate(whole):
        # Step t of two shards at batch 4 reads the samples one shard reads at batch 8: rank r the
        # positions p with p % 2 == r.
        for shard in range(2):
            assert np.array_equal(shards[shard][step][0], images[shard::2])
            assert np.array_equal(shards[shard][step][1], labels[shard::2])
    rank0 = [image for images, _ in shards[0] for image in images]
    rank1 = [image for images, _ in shards[1] for image in images]
    assert not any(np.array_equal(a, b) for a in rank0 for b in rank1)


def test_set_init_step_continues_the_stream_and_renders_only_what_it_reads(monkeypatch):
    config = Config(synthetic_images=40, batch_size=8, **AUGMENTED)
    full = stream(**vars(config))
    rendered = []
    render = Renderer.render

    def counted(self, label, image_seed):
        rendered.append(image_seed)
        return render(self, label, image_seed)

    monkeypatch.setattr(Renderer, "render", counted)
    for step in (3, 5, 7):                  # mid-epoch, the epoch boundary, inside the second epoch
        rendered.clear()
        dataset = create_dataset(None, config)
        dataset.set_init_step(step)
        iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=2)
        resumed = [batch for _ in range(2 - step // 5) for batch in iterator]
        assert same(resumed, full[step:]), step
        assert len(rendered) == (10 - step) * 8             # the skipped samples are never drawn


def test_too_few_synthetic_images_and_no_data_at_all_are_one_line_errors():
    with pytest.raises(ValueError, match=r"--synthetic_images 12 gives 6 per shard \(2 shard\(s\)\), fewer than "
                                         r"one batch of 8"):
        create_dataset(None, Config(synthetic_images=12, batch_size=8), num_shards=2)
    with pytest.raises(ValueError, match="no dataset folder given and --synthetic_images is 0"):
        create_dataset(None, Config())
    neither = run_py([TRAIN])
    assert neither.returncode == 2
    assert neither.stderr.startswith("train.py: error: the following arguments are required: --dataset_path (or "
                                     "--synthetic_images N")


# -- style options -------------------------------------------------------------------------------

def _skip_without_system_fonts():
    if not any(path.lower().endswith(".ttf") for path in system_font_files()):
        pytest.skip("no TrueType font installed on this machine")


@pytest.mark.parametrize("option, value", [
    ("fonts", "system"), ("fonts", "FONT_FILE"), ("fonts", "dejavu-sans"), ("font_sizes", "30,36"),
    ("text_colors", "0-60"), ("background_colors", "170-200"), ("noise_dots", 0), ("noise_curves", 4),
    ("char_rotation", 0.0), ("char_warp", 0.0), ("image_rotation", 10.0), ("image_shear", 0.3), ("image_wave", 4.0),
    ("image_blur", 1.5), ("color_jitter", 0.5), ("background_texture", 1.0), ("strike_lines", 3),
    ("image_noise", 0.1), ("jpeg_quality", 20),
])
def test_each_style_option_changes_the_image_and_is_off_by_default(option, value):
    assert getattr(RenderStyle.from_config(Config()), option) == getattr(RenderStyle(), option)   # off by default
    if value == "system":
        _skip_without_system_fonts()
    elif value == "FONT_FILE":
        value = package_font_files("dejavu-serif")[0]      # a font file that needs nothing from the system
    style = RenderStyle.from_config(Config(**{option: value}))
    assert list(style.changes()) == [option]
    plain, styled = Renderer(DIGITS), Renderer(DIGITS, style)
    for index, label in enumerate(["0", "47", "815", "2963"]):
        seed = f"style-{index}"
        assert not np.array_equal(plain.render_bgr(label, seed), styled.render_bgr(label, seed)), (option, label)
        assert np.array_equal(styled.render_bgr(label, seed), styled.render_bgr(label, seed))


def test_colour_ranges_blur_and_noise_do_what_they_say():
    def render(**style):
        return np.asarray(Renderer(DIGITS, RenderStyle(**style)).render("58", "look"), dtype=np.float64)

    dark = render(background_colors=(20, 40), text_colors=(150, 255))
    assert 20 <= np.median(dark) <= 40                           # mostly background, in its range
    # Blur smooths edges: less difference between neighbouring pixels.
    assert np.abs(np.diff(render(image_blur=3.0), axis=1)).mean() < np.abs(np.diff(render(), axis=1)).mean()
    # Without dots and curves, fewer pixels stand out from the background than with many of them.
    clean, noisy = render(noise_dots=0, noise_curves=0), render(noise_dots=300, noise_curves=6)
    assert (clean.mean(axis=2) < 200).sum() < (noisy.mean(axis=2) < 200).sum()
    # Lines across the text darken more pixels than the text alone.
    assert (clean.mean(axis=2) < 200).sum() < (render(noise_dots=0, noise_curves=0, strike_lines=6).mean(axis=2)
                                               < 200).sum()
    # A textured background varies across the image's top row, which no glyph reaches; a flat one barely does.
    plain = dict(noise_dots=0, noise_curves=0, background_colors=(120, 255))
    flat, textured = render(**plain)[0], render(**plain, background_texture=1.0)[0]
    assert textured.std(axis=0).mean() > flat.std(axis=0).mean() + 5
    # Pixel noise and a low JPEG quality both move pixels away from the clean drawing, more as they grow.
    assert 0 < np.abs(render(image_noise=0.02) - render()).mean() < np.abs(render(image_noise=0.2) - render()).mean()
    assert 0 < np.abs(render(jpeg_quality=90) - render()).mean() < np.abs(render(jpeg_quality=5) - render()).mean()


def test_process_data_renders_a_style_and_bad_style_values_are_one_line_errors(tmp_path):
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "styled", "--splits", "test", "--test_count", "6",
                   "--seed", "1", "--image_wave", "3", "--noise_dots", "0", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert "style: noise_dots=0, image_wave=3.0" in proc.stdout
    plain = process_data.render_split(str(tmp_path / "plain"), 6, seed=1, split="test", progress=False)
    styled = sorted(n for n in os.listdir(tmp_path / "styled" / "test") if n.endswith(".png"))
    assert styled == plain                                               # the same labels, other pixels
    for name in plain:
        with Image.open(tmp_path / "plain" / name) as a, Image.open(tmp_path / "styled" / "test" / name) as b:
            assert not np.array_equal(np.asarray(a), np.asarray(b))
    for argv, message in [
        (["--text_colors", "300-10"], "--text_colors must be LOW-HIGH with 0 <= LOW <= HIGH <= 255 (channel "
                                      "values), got '300-10'"),
        (["--text_colors", "200-220", "--background_colors", "210-230"],
         "--text_colors 200-220 and --background_colors 210-230 leave no text 38 grey levels away from its "
         "background"),
        (["--font_sizes", "40,0"], "--font_sizes must be comma-separated positive pixel sizes, e.g. 42,50,56, "
                                   "got '40,0'"),
        (["--image_rotation", "200"], "--image_rotation must be in [0, 180], got 200.0"),
        (["--jpeg_quality", "3"], "--jpeg_quality must be 0 (off) or a JPEG quality in [5, 95], got 3"),
        (["--strike_lines", "11"], "--strike_lines must be in [0, 10], got 11"),
        (["--fonts", str(tmp_path / "none.ttf")], f"--fonts {tmp_path / 'none.ttf'}: no such font file or folder"),
        (["--fonts", str(tmp_path / "styled" / "test" / plain[0])],
         f"--fonts {tmp_path / 'styled' / 'test' / plain[0]}: not a readable font (unknown file format)"),
    ]:
        bad = run_py([PROCESS_DATA, "--output_dir", tmp_path / "bad", "--train_count", "5", "--test_count", "5",
                      "--quiet", *argv])
        assert (bad.returncode, bad.stderr) == (2, f"process_data.py: error: {message}\n"), argv
        assert not (tmp_path / "bad").exists()


# -- training on the fly, resume, and the per-image normalisation a checkpoint carries --------------

def losses(stdout):
    return [float(v) for v in re.findall(r"loss is ([0-9.]+)", stdout)]


@pytest.fixture(scope="module")
def per_image_run(tmp_path_factory):
    """6 tiny training steps on the fly with per-image normalisation and a style; checkpoints at 3 and 6."""
    work = tmp_path_factory.mktemp("synthetic")
    proc = run_py([TRAIN, "--synthetic_images", "64", *TINY, "--train_steps", "6", "--save_checkpoint_steps", "3",
                   "--normalization", "per_image", "--image_blur", "1"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work, proc.stdout


def test_training_on_the_fly_resumes_exactly(per_image_run):
    work, stdout = per_image_run
    assert ("dataset: on the fly: 64 captchas per epoch, seed 1, 1-4 of '0123456789', 160x64, per_image "
            "normalisation, style: image_blur=1.0") in stdout
    full = losses(stdout)
    assert len(full) == 6
    proc = run_py([TRAIN, "--synthetic_images", "64", *TINY, "--train_steps", "6", "--normalization", "per_image",
                   "--image_blur", "1", "--resume_checkpoint", work / "checkpoint" / "warpctc-1_3.ckpt",
                   "--save_checkpoint_path", work / "resumed"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert losses(proc.stdout) == full[3:]


def _per_image_by_hand(path):
    """The network input of one image under per-image normalisation, written out: BGR, /255, each
    channel to mean 0 and std 1 over the image (std at least 1/255), channels first."""
    with Image.open(path) as handle:
        x = np.asarray(handle.convert("RGB"), dtype=np.float64)[:, :, ::-1] / 255.0
    x = (x - x.mean(axis=(0, 1))) / np.maximum(x.std(axis=(0, 1)), 1 / 255)
    return x.transpose(2, 0, 1).astype(np.float32)


def _fixed_by_hand(path):
    """The same under the original's fixed mean/std (BGR)."""
    with Image.open(path) as handle:
        x = np.asarray(handle.convert("RGB"), dtype=np.float64)[:, :, ::-1] / 255.0
    x = (x - np.array([0.9010, 0.9049, 0.9025])) / np.array([0.1521, 0.1347, 0.1458])
    return x.transpose(2, 0, 1).astype(np.float32)


def test_a_per_image_checkpoint_is_read_per_image_with_no_flag(per_image_run, data_root, tmp_path):
    import mindspore as ms

    import predict
    from src.checkpoint.model import load_network

    ckpt = per_image_run[0] / "checkpoint" / "warpctc-2_2.ckpt"
    paths = sorted(str(data_root / "test" / n) for n in os.listdir(data_root / "test") if n.endswith(".png"))[:8]
    net, spec = load_network(str(ckpt), Config())
    assert spec.normalization == "per_image"
    by_hand = np.stack([_per_image_by_hand(p) for p in paths])
    logits = net(ms.Tensor(by_hand)).asnumpy()
    # predict (as predict.py runs it, no option given) feeds the network per-image inputs, not fixed ones.
    fed = np.concatenate([image for image, _ in create_predict_dataset(paths, Config(), spec)
                          .create_tuple_iterator(output_numpy=True)])
    np.testing.assert_allclose(fed, by_hand, atol=1e-4)
    read = np.log([r.confidence for r in predict.predict(paths, str(ckpt), Config(), quiet=True)])
    as_per_image = np.log([c for _, c in decode_with_confidence(spec, logits)])
    as_fixed = np.log([c for _, c in decode_with_confidence(spec, 
        net(ms.Tensor(np.stack([_fixed_by_hand(p) for p in paths]))).asnumpy())])
    np.testing.assert_allclose(read, as_per_image, atol=0.05)           # log P(text), summed over 160 steps
    assert np.abs(read - as_fixed).max() > 1
    # eval.py refuses an option that contradicts the checkpoint.
    proc = run_py([EVAL, "--dataset_path", data_root / "test", "--checkpoint_path", ckpt, "--normalization", "fixed"])
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith(f"checkpoint {ckpt}: --normalization 'fixed' conflicts with the "
                                        "checkpoint's 'per_image'; drop the option: the checkpoint says what it reads")
    # export.py writes the normalisation into its JSON, and a user applying only the JSON gets the logits.
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "m", "--file_format", "ONNX",
                   "--export_batch_size", "8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "m.onnx.json").read_text(encoding="utf-8"))["input"]
    assert (info["normalization"], info["mean"], info["std"]) == ("per_image", None, None)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: by_hand})
    np.testing.assert_allclose(out, logits, rtol=1e-4, atol=1e-4)
