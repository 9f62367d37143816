"""Adapting to a new captcha style: a labelled folder mixed with captchas rendered on the fly, the
folder's images augmented anew each epoch, the launchers' on-the-fly dataset, configs/adapt.yaml,
and a tiny adaptation run that learns a made-up style."""
import collections
import os
import re
import shlex

import numpy as np
import pytest

from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.data.images import load_bgr
from src.data.labels import list_samples
from src.dataset import CaptchaSource, MixedSource, SyntheticSource, create_dataset
from src.data.render import Renderer, RenderStyle
from conftest import REPO, run_bash, run_py

TRAIN, EVAL = os.path.join(REPO, "train.py"), os.path.join(REPO, "eval.py")
DIGITS = CaptchaSpec()
AUGMENT = dict(image_rotation=4.0, image_shear=0.2, image_wave=2.0, image_blur=0.8, color_jitter=0.3)


def epochs_of(dataset, epochs):
    iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    return [[batch for batch in iterator] for _ in range(epochs)]


def labels_of(batches):
    return [DIGITS.decode(row) for _, label in batches for row in label]


def test_each_epoch_reads_every_folder_image_once_plus_new_captchas_on_the_fly(data_root):
    cfg = Config(synthetic_images=32, batch_size=16, seed=5, num_parallel_workers=1)
    folder_labels = [label for _, label in list_samples(str(data_root / "train"), DIGITS)]     # 160 images
    stream = SyntheticSource(Renderer(DIGITS), seed=5, count=32)
    dataset = create_dataset(str(data_root / "train"), cfg)
    assert dataset.get_dataset_size() == 12                                # (160 + 32) / 16
    first, second = epochs_of(dataset, 2)
    for epoch, batches in enumerate((first, second)):
        drawn = [stream.sample(g)[0] for g in range(32 * epoch, 32 * (epoch + 1))]
        assert collections.Counter(labels_of(batches)) == collections.Counter(folder_labels + drawn), epoch
    assert labels_of(first) != labels_of(second)                           # shuffled anew each epoch
    again = epochs_of(create_dataset(str(data_root / "train"), cfg), 2)
    assert all(np.array_equal(a, b) for x, y in zip(first + second, again[0] + again[1]) for a, b in zip(x, y))


def test_shards_split_the_folder_and_the_stream_disjointly(data_root):
    cfg = Config(synthetic_images=32, batch_size=8, seed=5, num_parallel_workers=1)
    stream = SyntheticSource(Renderer(DIGITS), seed=5, count=32)
    shards = [labels_of(epochs_of(create_dataset(str(data_root / "train"), cfg, num_shards=2, shard_id=r), 1)[0])
              for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 80 + 16
    folder = collections.Counter(label for _, label in list_samples(str(data_root / "train"), DIGITS))
    # together: every folder image once, and the first 32 positions of the stream (rank r: g % 2 == r)
    assert collections.Counter(shards[0] + shards[1]) == folder + collections.Counter(
        stream.sample(g)[0] for g in range(32))
    for rank in range(2):
        drawn = collections.Counter(shards[rank]) - folder
        assert set(drawn) <= {stream.sample(g)[0] for g in range(rank, 32, 2)}


def test_a_resumed_mixed_run_reads_what_an_uninterrupted_one_would(data_root):
    cfg = Config(synthetic_images=32, batch_size=16, seed=2, num_parallel_workers=1, augment_folder=True, **AUGMENT)
    full = [b for epoch in epochs_of(create_dataset(str(data_root / "train"), cfg), 2) for b in epoch]
    for step in (5, 12, 17):                   # mid-epoch, the epoch boundary, inside the second epoch
        dataset = create_dataset(str(data_root / "train"), cfg)
        dataset.set_init_step(step)
        iterator = dataset.create_tuple_iterator(output_numpy=True, num_epochs=2)
        resumed = [batch for _ in range(2 - step // 12) for batch in iterator]
        assert len(resumed) == 24 - step
        assert all(np.array_equal(a, b) for x, y in zip(resumed, full[step:]) for a, b in zip(x, y)), step


def test_folder_augmentation_is_off_by_default_and_draws_anew_each_epoch(data_root):
    samples = list_samples(str(data_root / "train"), DIGITS)
    folder = CaptchaSource(samples, DIGITS)
    plain = MixedSource(folder, None, None, seed=1)
    for draw in (0, 7, 160 + 7):                        # draw d reads image d % 160, unchanged
        assert np.array_equal(plain[2 * draw][0], load_bgr(samples[draw % 160][0]))
        assert DIGITS.decode(plain[2 * draw][1]) == samples[draw % 160][1]
    augmented = MixedSource(folder, None, Renderer(DIGITS, RenderStyle(**AUGMENT)), seed=1)
    one, next_epoch = augmented[2 * 7][0], augmented[2 * (160 + 7)][0]
    assert one.shape == next_epoch.shape == (64, 160, 3) and one.dtype == np.uint8
    assert not np.array_equal(one, load_bgr(samples[7][0]))
    assert not np.array_equal(one, next_epoch)                     # the same image, another epoch
    assert np.array_equal(one, augmented[2 * 7][0])                # a pure function of (seed, draw)
    assert not np.array_equal(one, MixedSource(folder, None, augmented.augment, seed=2)[2 * 7][0])


def test_augmenting_without_a_folder_is_a_one_line_error():
    proc = run_py([TRAIN, "--synthetic_images", "64", "--augment_folder", "true"])
    assert (proc.returncode, proc.stderr) == (2, "train.py: error: --augment_folder true augments the images of "
                                                 "--dataset_path: give a folder\n")


def test_label_classes_without_captchas_on_the_fly_is_a_one_line_error(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    proc = run_py([TRAIN, "--dataset_path", str(folder), "--label_classes", "digits"])
    assert (proc.returncode, proc.stderr) == (2, "train.py: error: --label_classes 'digits' picks the labels of "
                                                 "captchas drawn on the fly: give --synthetic_images N\n")


def test_launchers_take_dash_for_captchas_on_the_fly(tmp_path):
    proc = run_bash([os.path.join(REPO, "scripts", "run_distribute_train_cpu.sh"), "2", "-", "--dry_run",
                     "--synthetic_images", "128"], env={"WARPCTC_RUN_DIR": str(tmp_path / "run"),
                                                        "MASTER_PORT": "23456"})
    assert proc.returncode == 0, proc.stderr
    assert "dataset: -" in proc.stdout
    words = shlex.split(next(line for line in proc.stdout.splitlines() if line.startswith("cd ")))
    train = words[words.index(os.path.join(REPO, "train.py")):words.index(">")]
    assert "--dataset_path" not in train
    assert train[1:3] == ["--platform", "CPU"] and train[-2:] == ["--synthetic_images", "128"]
    missing = run_bash([os.path.join(REPO, "scripts", "run_standalone_train.sh"), str(tmp_path / "nope"), "CPU"],
                       env={"WARPCTC_RUN_DIR": str(tmp_path / "run")})
    assert missing.returncode != 0 and f"{tmp_path / 'nope'}: no such folder" in missing.stderr


# -- a tiny adaptation run ---------------------------------------------------------------------------

# A made-up style the digits release reads none of (0 % here): dark text on a mid-grey background, blurred.
MADE_UP = ["--text_colors", "0-40", "--background_colors", "90-140", "--image_blur", "1.5"]


def accuracy(stdout):
    return float(re.search(r"'WarpCTCAccuracy': ([0-9.]+)", stdout).group(1))


@pytest.fixture(scope="module")
def made_up_style(tmp_path_factory):
    root = tmp_path_factory.mktemp("made_up")
    proc = run_py([os.path.join(REPO, "process_data.py"), "--output_dir", root, "--train_count", "256",
                   "--test_count", "96", "--seed", "9", "--quiet", *MADE_UP])
    assert proc.returncode == 0, proc.stderr
    return root


@pytest.mark.parametrize("release", ["warpctc.ckpt", "crnn_digits.ckpt"])
def test_a_tiny_adaptation_run_learns_a_made_up_style(made_up_style, tmp_path, release):
    base = os.path.join(REPO, "pretrained", release)
    test = made_up_style / "test"
    before = run_py([EVAL, "--dataset_path", test, "--checkpoint_path", base, "--quiet"])
    assert before.returncode == 0, before.stderr
    proc = run_py([TRAIN, "--dataset_path", made_up_style / "train", "--init_checkpoint", base,
                   "--config_path", os.path.join(REPO, "configs", "adapt.yaml"), "--batch_size", "16",
                   "--synthetic_images", "64", "--train_steps", "40", "--warmup_steps", "5",
                   "--save_checkpoint_path", tmp_path / "adapted"], cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mixed with: on the fly: 64 captchas per epoch" in proc.stdout
    assert "folder images augmented: image_rotation=3.0, image_shear=0.15" in proc.stdout
    # Named by the network, and named in full at the end.
    network = release.split("_")[0].split(".")[0]
    adapted = tmp_path / "adapted" / f"{network}-2_20.ckpt"
    assert proc.stdout.strip().splitlines()[-1].endswith(f"; last checkpoint {adapted}"), proc.stdout[-500:]
    after = run_py([EVAL, "--dataset_path", test, "--checkpoint_path", adapted, "--quiet"])
    assert after.returncode == 0, after.stderr
    assert accuracy(after.stdout) >= accuracy(before.stdout) + 0.2, (before.stdout, after.stdout)


def test_the_adaptation_bench_names_a_missing_base_in_one_line(made_up_style, tmp_path):
    missing = tmp_path / "no_such.ckpt"
    proc = run_py([os.path.join(REPO, "bench", "bench_adapt.py"), "--base", missing, "--style_dir", made_up_style,
                   "--test", "test", "--out", tmp_path / "runs"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"bench_adapt.py: error: {missing}: does not exist"
    assert not (tmp_path / "runs").exists()
