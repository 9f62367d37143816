"""The adaptation pipeline's per-epoch costs and the third held-out style.

A labelled folder is decoded once per run, not once per epoch; an epoch of a folder mixed with
captchas rendered on the fly is whole batches that hold every labelled image once, augmented anew,
with nothing drawn only to be dropped; the per-image normalisation gives the values of its formula.
The held-out style ``outline`` is a pure function of (seed, split, count) in the dataset format.
The research script that draws it and the overhead bench are run as a user runs them (no test imports
bench/ or research/).
"""
import builtins
import collections
import hashlib
import os

import numpy as np
import pytest

import src.dataset
from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.data.images import load_bgr
from src.data.labels import list_samples
from src.dataset import PerImageStandardize, SyntheticSource, create_dataset
from src.data.render import Renderer, RenderStyle
from conftest import REPO, run_py

HELDOUT_STYLES = os.path.join(REPO, "research", "heldout_styles.py")
DIGITS = CaptchaSpec()
AUGMENT = dict(image_rotation=4.0, image_shear=0.2, image_wave=2.0, image_blur=0.8, color_jitter=0.3)


def heldout_styles(*args):
    """``python research/heldout_styles.py ARGS``: the CompletedProcess."""
    return run_py([HELDOUT_STYLES, *args])


def render_outline(output_dir, count, seed_text):
    """``count`` outline captchas of the digits task drawn from ``seed_text``: their folder (with labels.tsv)."""
    proc = heldout_styles("--output_dir", output_dir, "--style", "outline", "--splits", f"pinned{count}",
                          "--seed_text", seed_text)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return output_dir / "outline" / f"pinned{count}"


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """100 captchas of the outline style with a labels.tsv, as a user's labelled folder."""
    return render_outline(tmp_path_factory.mktemp("labelled"), 100, "pipeline")


@pytest.fixture
def opened(monkeypatch, labelled):
    """Counts of the opens of each file of ``labelled``, by name, from here on (any thread)."""
    counts = collections.Counter()
    real_open = builtins.open

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.dirname(os.path.abspath(file)) == str(labelled):
            counts[os.path.basename(file)] += 1
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    return counts


def epochs_of(dataset, epochs):
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    return [[batch for batch in iterator] for _ in range(epochs)]


def rows_of(batches):
    return [(image, DIGITS.decode(label)) for images, labels in batches for image, label in zip(images, labels)]


def test_a_training_run_reads_each_labelled_file_once_not_once_per_epoch(labelled, opened):
    cfg = Config(synthetic_images=28, batch_size=16, seed=3, num_parallel_workers=1, augment_folder=True, **AUGMENT)
    epochs = epochs_of(create_dataset(str(labelled), cfg), 3)
    assert [len(e) for e in epochs] == [8, 8, 8]
    images = [name for name in os.listdir(labelled) if name.endswith(".png")]
    assert len(images) == 100
    # The up-front check reads every image once; the three epochs read none again.
    assert {name: opened[name] for name in images} == {name: 1 for name in images}
    assert opened["labels.tsv"] == 1


def test_a_folder_too_big_to_keep_is_read_image_by_image(labelled, opened, monkeypatch):
    monkeypatch.setattr(src.dataset, "MAX_KEPT_BYTES", 50 * 64 * 160 * 3)        # room for half the folder
    cfg = Config(batch_size=20, seed=3, num_parallel_workers=1)
    first, second = epochs_of(create_dataset(str(labelled), cfg), 2)
    images = [name for name in os.listdir(labelled) if name.endswith(".png")]
    # Checked once, then read again by each of the two epochs: still every image, every epoch.
    assert {name: opened[name] for name in images} == {name: 3 for name in images}
    samples = dict((os.path.basename(p), label) for p, label in list_samples(str(labelled), DIGITS))
    for epoch in (first, second):
        assert sorted(label for _, label in rows_of(epoch)) == sorted(samples.values())


def test_each_epoch_holds_every_labelled_image_once_augmented_anew_and_draws_nothing_to_drop(labelled,
                                                                                           monkeypatch):
    # 100 labelled + 30 on the fly at batch 16 is 8 batches and 2 left over: the stream gives 28, so
    # every labelled image is in every epoch and no captcha is drawn for the dropped remainder.
    cfg = Config(synthetic_images=30, batch_size=16, seed=4, num_parallel_workers=1, augment_folder=True, **AUGMENT)
    renders, augments = [], []
    render, augment = Renderer.render, Renderer.augment
    monkeypatch.setattr(Renderer, "render", lambda self, *a: renders.append(a) or render(self, *a))
    monkeypatch.setattr(Renderer, "augment", lambda self, *a: augments.append(a) or augment(self, *a))
    dataset = create_dataset(str(labelled), cfg)
    assert dataset.get_dataset_size() == 8
    epochs = [rows_of(batches) for batches in epochs_of(dataset, 2)]
    assert (len(renders), len(augments)) == (2 * 28, 2 * (100 + 28))

    folder = collections.Counter(label for _, label in list_samples(str(labelled), DIGITS))
    stream = SyntheticSource(Renderer(DIGITS, RenderStyle(**AUGMENT)), seed=4, count=28)
    for number, rows in enumerate(epochs):
        drawn = collections.Counter(stream.sample(g)[0] for g in range(28 * number, 28 * (number + 1)))
        assert collections.Counter(label for _, label in rows) == folder + drawn, number
    # A label only one folder image has, and no captcha of either epoch: that image, in each epoch.
    drawn = {stream.sample(g)[0] for g in range(56)}
    mine = [label for label, count in folder.items() if count == 1 and label not in drawn]
    assert len(mine) > 50
    for label in mine[:10]:
        first, second = (next(image for image, text in rows if text == label) for rows in epochs)
        assert not np.array_equal(first, second), label
    # The same seed: the same epochs, pixel for pixel.
    again = [rows_of(batches) for batches in epochs_of(create_dataset(str(labelled), cfg), 2)]
    assert all(a[1] == b[1] and np.array_equal(a[0], b[0]) for x, y in zip(epochs, again) for a, b in zip(x, y))


def test_shards_still_split_the_folder_and_each_reads_its_share_once_per_epoch(labelled):
    # Per shard: 50 labelled + 15 on the fly at batch 8 is 8 batches and 1 over: the stream gives 14.
    cfg = Config(synthetic_images=30, batch_size=8, seed=4, num_parallel_workers=1)
    folder = collections.Counter(label for _, label in list_samples(str(labelled), DIGITS))
    stream = SyntheticSource(Renderer(DIGITS), seed=4, count=14)
    shards = []
    for rank in range(2):
        dataset = create_dataset(str(labelled), cfg, num_shards=2, shard_id=rank)
        assert dataset.get_dataset_size() == 8
        shards.append(collections.Counter(label for _, label in rows_of(epochs_of(dataset, 1)[0])))
    drawn = collections.Counter(stream.sample(g)[0] for g in range(28))     # 14 positions of each shard
    assert shards[0] + shards[1] == folder + drawn
    assert sum(shards[0].values()) == sum(shards[1].values()) == 64


def test_per_image_normalisation_gives_the_values_of_its_formula(labelled):
    standardize = PerImageStandardize()
    paths = [path for path, _ in list_samples(str(labelled), DIGITS)][:40]
    flat = np.full((64, 160, 3), 0.4, np.float32)
    for image in [load_bgr(path).astype(np.float32) / np.float32(255) for path in paths] + [flat]:
        mean = image.mean(axis=(0, 1), dtype=np.float64, keepdims=True)
        std = np.maximum(image.std(axis=(0, 1), dtype=np.float64, keepdims=True), 1 / 255)
        expected = ((image - mean) / std).astype(np.float32)
        got = standardize(image)
        assert got.dtype == np.float32 and got.shape == image.shape
        assert np.array_equal(got, expected)
    assert not standardize(flat).any()


# -- the outline held-out style ----------------------------------------------------------------------

def digest(folder):
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_an_outline_split_is_a_pure_function_of_its_seed(tmp_path, labelled):
    again = render_outline(tmp_path / "again", 100, "pipeline")
    assert digest(again) == digest(labelled)
    other = render_outline(tmp_path / "other", 100, "other")
    same, other = digest(labelled), digest(other)
    assert not any(same[name] == other[name] for name in same if name.endswith(".png"))


def test_outline_splits_have_the_spec_size_and_labels_the_reader_takes(tmp_path):
    proc = heldout_styles("--output_dir", tmp_path, "--style", "outline", "--splits", "adapt6,test5",
                          "--charset", "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                          "--max_captcha_digits", "6", "--captcha_width", "200", "--captcha_height", "80")
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = CaptchaSpec(charset="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz", max_length=6,
                       width=200, height=80)
    adapt = list_samples(str(tmp_path / "outline" / "adapt6"), spec)
    test = list_samples(str(tmp_path / "outline" / "test5"), spec)
    assert (len(adapt), len(test)) == (6, 5)
    for path, label in adapt + test:
        assert load_bgr(path).shape == (80, 200, 3)
        assert spec.check_label(label) == label
    assert not {load_bgr(p).tobytes() for p, _ in adapt} & {load_bgr(p).tobytes() for p, _ in test}
    # The image is drawn: glyph outlines much darker than the background, not a blank texture.
    grey = load_bgr(adapt[0][0]).mean(axis=2)
    assert grey.min() < np.median(grey) - 80


def test_an_alphabet_the_outline_fonts_cannot_draw_is_one_line(tmp_path):
    proc = heldout_styles("--output_dir", tmp_path, "--style", "outline", "--splits", "test3",
                          "--charset", "0123456789\u20ac")
    assert proc.returncode == 2
    assert proc.stderr == ("heldout_styles.py: error: --charset: style outline's fonts (cmss10.ttf, "
                           "cmtt10.ttf) do not draw '\u20ac'\n")
    assert not (tmp_path / "outline" / "test3").exists()


def test_the_overhead_bench_names_a_wrong_network_in_one_line():
    proc = run_py([os.path.join(REPO, "bench", "bench_adapt_overhead.py"), "--networks", "warpctc,lstm"])
    assert proc.returncode == 2
    assert proc.stderr == "bench_adapt_overhead.py: error: --networks: lstm not among warpctc, crnn\n"
