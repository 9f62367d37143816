"""process_data.py: names, labels, counts, reproducibility, alphabets, safe re-runs, manifests, failures."""
import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from captcha.image import ImageCaptcha
from PIL import Image

import process_data
from src.captcha_spec import CaptchaSpec
from src.data.labels import list_samples, parse_label
from src.data.manifest import check_compatible, describe_split, read_manifest
from src.data.render import undrawable_characters
from conftest import REPO, remount_ro, run_py, running, snapshot

PROCESS_DATA = os.path.join(REPO, "process_data.py")
CAPTCHA_VERSION = importlib.metadata.version("captcha")
HEX = "0123456789ABCDEF"
MIXED = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def test_names_labels_and_counts(tmp_path):
    rc = process_data.main(["--output_dir", str(tmp_path), "--train_count", "120", "--test_count", "30",
                            "--workers", "2", "--quiet"])
    assert rc == 0
    train = sorted(n for n in os.listdir(tmp_path / "train") if n.endswith(".png"))
    test = sorted(n for n in os.listdir(tmp_path / "test") if n.endswith(".png"))
    assert len(train) == 120 and len(test) == 30
    assert train[0].startswith("000-") and train[-1].startswith("119-")   # width = digits of the count
    assert test[0].startswith("00-")
    lengths = {len(parse_label(n, CaptchaSpec())) for n in train}
    assert lengths == {1, 2, 3, 4}                         # 1..4 digits all occur
    with Image.open(tmp_path / "train" / train[0]) as image:
        assert image.format == "PNG" and image.size == (160, 64)
    # The two splits are different draws.
    assert [n.split("-")[1] for n in train[:30]] != [n.split("-")[1] for n in test]


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = process_data.render_split(str(tmp_path / "a"), 40, seed=3, workers=1, progress=False)
    b = process_data.render_split(str(tmp_path / "b"), 40, seed=3, workers=2, progress=False)
    c = process_data.render_split(str(tmp_path / "c"), 40, seed=4, workers=2, progress=False)
    assert a == b and a != c
    for name in a:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_digits_render_as_every_earlier_release_did(tmp_path):
    # Names and pixels of process_data.py before the alphabet became configurable (seed 1, train):
    # the label and image draws must not change, or data/ and the released model's test set would.
    names = process_data.render_split(str(tmp_path / "train"), 12, seed=1, split="train", progress=False)
    assert names == ["00-78.png", "01-7.png", "02-4158.png", "03-1.png", "04-8.png", "05-58.png", "06-020.png",
                     "07-51.png", "08-0.png", "09-5840.png", "10-4.png", "11-17.png"]
    pixels = hashlib.sha256()
    for name in names:
        with Image.open(tmp_path / "train" / name) as image:
            pixels.update(np.asarray(image).tobytes())
    assert pixels.hexdigest() == "3234742193868d31d03628e50d7786072284b2de5e90ea8cdbfb0776361fabfe"


def labels_of(folder):
    """Label of every PNG in a rendered folder, from its ``<index>-<label>.png`` name."""
    names = sorted(n for n in os.listdir(folder) if n.endswith(".png"))
    return [process_data.FILE_RE.match(n).group("label") for n in names]


@pytest.mark.parametrize("charset, count", [(HEX, 200), (MIXED, 300)])
def test_any_alphabet_renders_valid_labels_and_its_manifest(tmp_path, charset, count):
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path, "--splits", "test", "--test_count", count,
                   "--charset", charset, "--workers", "2", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    spec = CaptchaSpec(charset=charset)
    labels = labels_of(tmp_path / "test")
    assert len(labels) == count
    for label in labels:
        spec.check_label(label)
    assert {len(label) for label in labels} == {1, 2, 3, 4}
    assert set("".join(labels)) == set(charset)          # every character is drawn, upper and lower case
    info = read_manifest(str(tmp_path / "test"))
    assert (info["alphabet"], info["count"], info["max_length"]) == (charset, count, 4)
    with Image.open(tmp_path / "test" / sorted(os.listdir(tmp_path / "test"))[0]) as image:
        assert image.size == (160, 64)


def test_the_config_file_of_a_training_sets_what_is_rendered(tmp_path):
    config = tmp_path / "alnum.yaml"
    config.write_text('charset: "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"\nmax_captcha_digits: 5\nseed: 9\n'
                      "optimizer: adam\nlearning_rate: 0.001\n")
    assert process_data.main(["--config_path", str(config), "--output_dir", str(tmp_path / "a"), "--splits", "test",
                              "--test_count", "40", "--quiet"]) == 0
    info = read_manifest(str(tmp_path / "a" / "test"))
    assert (info["alphabet"], info["max_length"], info["seed"]) == ("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", 5, 9)
    # The command line overrides the file, as for train.py.
    assert process_data.main(["--config_path", str(config), "--seed", "3", "--output_dir", str(tmp_path / "b"),
                              "--splits", "test", "--test_count", "40", "--quiet"]) == 0
    assert read_manifest(str(tmp_path / "b" / "test"))["seed"] == 3
    assert labels_of(tmp_path / "a" / "test") != labels_of(tmp_path / "b" / "test")


@pytest.mark.parametrize("charset, message", [
    ("", "--charset is empty: give the characters a captcha can hold, e.g. 0123456789"),
    ("0123456789AB1", "--charset '0123456789AB1' repeats '1': every character must appear once"),
    ("01/2", "--charset '01/2' holds '/', which cannot be part of a file name (process_data.py names each "
             "image <index>-<label>.png)"),
    ("01\u4e2d", "--charset '01\u4e2d': the captcha package's fonts cannot draw '\u4e2d'"),
])
def test_bad_alphabets_are_one_line_and_write_nothing(tmp_path, charset, message):
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "data", "--charset", charset, "--quiet"])
    assert proc.returncode == 2
    assert proc.stderr == f"process_data.py: error: {message}\n"
    assert not (tmp_path / "data").exists()


def test_captcha_draws_digits_and_both_cases_of_letters():
    generator = ImageCaptcha(width=160, height=64)
    for char in MIXED:
        # Grey on white without the noise: the pixels that are not white are the character. (captcha
        # pastes with the colour's own brightness as the mask, so black would draw nothing.)
        image = generator.create_captcha_image(char, color=(128, 128, 128), background=(255, 255, 255))
        assert (np.asarray(image.convert("L")) < 200).sum() > 30, f"{char!r} is drawn blank"
    # Drawn, and not as the missing-glyph box every font has: the check the renderer runs.
    assert undrawable_characters(MIXED, generator.truefonts) == []
    assert undrawable_characters("A\u4e2dB", generator.truefonts) == ["\u4e2d"]


def test_a_split_of_another_alphabet_is_replaced_but_user_images_are_not(tmp_path):
    out = tmp_path / "train"
    process_data.render_split(str(out), 30, spec=CaptchaSpec(charset="abcdef"), progress=False)
    names = process_data.render_split(str(out), 10, progress=False)     # digits over letters: both ours
    assert sorted(os.listdir(out)) == sorted(names + ["manifest.json"])
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "0001-xyz.png").write_bytes(b"a user's captcha")
    with pytest.raises(ValueError, match="holds files that process_data.py did not write \\(e.g. 0001-xyz.png\\)"):
        process_data.render_split(str(mine), 10, progress=False)
    assert (mine / "0001-xyz.png").read_bytes() == b"a user's captcha"


def test_rerun_replaces_folder_without_mixing(tmp_path):
    out = tmp_path / "train"
    first = process_data.render_split(str(out), 50, seed=1, progress=False)
    second = process_data.render_split(str(out), 20, seed=2, progress=False)
    assert sorted(os.listdir(out)) == sorted(second + ["manifest.json"])
    assert len(set(first) - set(second)) > 0                 # the old run had other files, now gone
    assert sorted(os.listdir(tmp_path)) == ["train"]       # no staging folder left behind


def test_refuses_folder_with_foreign_files(tmp_path):
    out = tmp_path / "train"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        process_data.render_split(str(out), 10, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_users_labelled_captchas_without_a_manifest_are_refused_not_replaced(tmp_path):
    # The red team's case: hand-made captchas whose names and labels look like a rendered split's.
    mine = tmp_path / "mine" / "train"
    mine.mkdir(parents=True)
    for name in ("0000-4821.png", "0001-7.png", "0002-930.png", "0003-55.png"):
        (mine / name).write_bytes(f"the user's {name}".encode())
    before = snapshot(mine)
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "mine", "--splits", "train", "--train_count", "4"])
    assert proc.returncode == 2
    assert proc.stderr == (f"process_data.py: error: {mine}: holds files that process_data.py did not write (e.g. "
                           f"0000-4821.png) and no manifest.json; refusing to replace it, choose another "
                           f"--output_dir\n")
    assert snapshot(mine) == before and sorted(os.listdir(tmp_path / "mine")) == ["train"]


def _drop_a_user_file(split):
    (split / "0000-4821.png").write_bytes(b"the user's own captcha")


def _make_a_planned_name_a_folder(split):
    name = sorted(n for n in os.listdir(split) if n.endswith(".png"))[0]
    os.remove(split / name)
    (split / name).mkdir()
    (split / name / "notes.txt").write_text("the user's notes")


@pytest.mark.parametrize("spoil, named", [
    (_drop_a_user_file, "0000-4821.png"),
    (_make_a_planned_name_a_folder, "0-78.png"),
])
def test_a_rendered_split_holding_something_it_did_not_render_is_refused(tmp_path, spoil, named):
    split = tmp_path / "data" / "train"
    process_data.render_split(str(split), 6, seed=1, split="train", progress=False)
    spoil(split)
    before = {name: sorted(os.listdir(split / name)) if (split / name).is_dir() else (split / name).read_bytes()
              for name in os.listdir(split)}
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "data", "--splits", "train", "--train_count", "6",
                   "--quiet"])
    assert proc.returncode == 2
    assert proc.stderr == (f"process_data.py: error: {split}: holds files that process_data.py did not write (e.g. "
                           f"{named}) beside the split its manifest.json describes; refusing to replace it, choose "
                           f"another --output_dir\n")
    assert {name: sorted(os.listdir(split / name)) if (split / name).is_dir() else (split / name).read_bytes()
            for name in os.listdir(split)} == before


@pytest.mark.parametrize("damage, reason", [
    ("{", "invalid JSON: Expecting property name enclosed in double quotes at line 1"),
    (json.dumps({"split": "train"}), "'count' missing or not int"),
])
def test_a_split_with_a_damaged_manifest_is_refused_not_replaced(tmp_path, damage, reason):
    split = tmp_path / "data" / "train"
    process_data.render_split(str(split), 6, seed=1, split="train", progress=False)
    (split / "manifest.json").write_text(damage)
    before = snapshot(split)
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "data", "--splits", "train", "--train_count", "6",
                   "--quiet"])
    assert proc.returncode == 2
    assert proc.stderr == (f"process_data.py: error: {split / 'manifest.json'}: damaged dataset manifest ({reason}); "
                           f"refusing to replace the folder (process_data.py replaces only a split its manifest "
                           f"describes); delete it yourself to re-render it\n")
    assert snapshot(split) == before


def test_an_empty_folder_is_filled_and_a_split_with_missing_files_is_replaced(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    names = process_data.render_split(str(empty), 6, progress=False)
    assert sorted(os.listdir(empty)) == sorted(names + ["manifest.json"])
    os.remove(empty / names[2])                         # a file deleted since: still only what it rendered
    again = process_data.render_split(str(empty), 8, seed=2, progress=False)
    assert sorted(os.listdir(empty)) == sorted(again + ["manifest.json"])


def test_cli_help_documents_every_option_and_errors_are_one_line(tmp_path):
    proc = run_py([os.path.join(REPO, "process_data.py"), "--help"])
    assert proc.returncode == 0
    for option in ("--output_dir", "--train_count", "--test_count", "--captcha_width", "--captcha_height",
                   "--max_captcha_digits", "--workers", "--seed", "--splits", "--charset", "--config_path"):
        assert option in proc.stdout
    bad = run_py([os.path.join(REPO, "process_data.py"), "--output_dir", str(tmp_path), "--train_count", "0"])
    assert bad.returncode == 2
    assert bad.stderr.strip() == "process_data.py: error: --train_count must be positive, got 0"


def test_manifest_describes_each_split_and_readers_ignore_it(tmp_path):
    assert process_data.main(["--output_dir", str(tmp_path), "--train_count", "40", "--test_count", "16",
                              "--seed", "5", "--captcha_width", "120", "--max_captcha_digits", "3",
                              "--workers", "2", "--quiet"]) == 0
    train, test = tmp_path / "train", tmp_path / "test"
    info = read_manifest(str(train))
    assert {k: info[k] for k in ("split", "count", "seed", "width", "height", "min_length", "max_length",
                                 "alphabet", "captcha_version")} == \
        dict(split="train", count=40, seed=5, width=120, height=64, min_length=1, max_length=3,
             alphabet="0123456789", captcha_version=CAPTCHA_VERSION)
    assert describe_split(str(train)) == \
        f"{train}: 40 images, seed 5, 120x64, 1-3 chars of 0123456789, captcha {CAPTCHA_VERSION}"
    # The dataset reader takes the images only.
    spec = CaptchaSpec(max_length=3, width=120)
    assert len(list_samples(str(train), spec)) == 40 and len(list_samples(str(test), spec)) == 16
    # A run killed before it reached test leaves a new train beside the old test: the lines show it.
    process_data.render_split(str(train), 24, spec=spec, seed=6, progress=False)
    assert describe_split(str(train)).startswith(f"{train}: 24 images, seed 6, 120x64")
    assert describe_split(str(test)).startswith(f"{test}: 16 images, seed 5, 120x64")
    assert check_compatible(str(train), str(test)) is None
    process_data.render_split(str(train), 24, spec=CaptchaSpec(max_length=3), seed=6, progress=False)
    assert check_compatible(str(train), str(test)) == \
        f"{train} and {test} were rendered differently: width 160 vs 120"
    # A file deleted since rendering is visible too.
    os.remove(sorted(train.glob("*.png"))[0])
    assert describe_split(str(train)).endswith("(but the folder now holds 23 .png files)")


def test_folder_without_manifest_is_user_data_and_a_damaged_one_is_named(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "1-23.png").write_bytes(b"")
    assert read_manifest(str(user)) is None and describe_split(str(user)) is None
    out = tmp_path / "train"
    process_data.render_split(str(out), 10, progress=False)
    manifest = out / "manifest.json"
    manifest.write_text(manifest.read_text()[:30])
    with pytest.raises(ValueError) as err:
        describe_split(str(out))
    assert str(err.value).startswith(f"{manifest}: damaged dataset manifest (invalid JSON")
    manifest.write_text(json.dumps({"split": "train", "count": "ten"}))
    with pytest.raises(ValueError, match=f"{manifest}: damaged dataset manifest \\('count' missing or not int\\)"):
        read_manifest(str(out))


def test_images_too_narrow_for_ctc_are_refused_before_anything_is_written(tmp_path):
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "data", "--captcha_width", "7"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("process_data.py: error: --captcha_width 7 gives the warpctc network 7 CTC steps "
                                   "(one per pixel column), too few for --max_captcha_digits 4: CTC needs up to 2 "
                                   "per character (a blank between repeats), at least 2 x 4 = 8")
    assert not (tmp_path / "data").exists()
    proc = run_py([PROCESS_DATA, "--output_dir", tmp_path / "data", "--captcha_width", "8", "--splits", "test",
                   "--test_count", "3", "--quiet"])
    assert proc.returncode == 0, proc.stderr


def test_full_disk_is_one_line_and_keeps_the_existing_split(tmpfs):
    process_data.render_split(str(tmpfs / "train"), 20, seed=1, progress=False)
    before = snapshot(tmpfs / "train")
    proc = run_py([PROCESS_DATA, "--output_dir", tmpfs, "--splits", "train", "--train_count", "2000",
                   "--workers", "2", "--quiet"])
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert line.startswith(f"process_data.py: error: {tmpfs / 'train'}: rendering failed: No space left on device")
    assert line.endswith("; the existing folder is left as it was")
    assert snapshot(tmpfs / "train") == before
    assert sorted(os.listdir(tmpfs)) == ["train"]             # the staging folder is gone


def test_read_only_folder_is_one_line_and_keeps_the_existing_split(tmpfs):
    process_data.render_split(str(tmpfs / "train"), 10, seed=1, progress=False)
    before = snapshot(tmpfs / "train")
    remount_ro(tmpfs)
    proc = run_py([PROCESS_DATA, "--output_dir", tmpfs, "--splits", "train", "--train_count", "10", "--quiet"])
    assert proc.returncode == 2
    assert re.fullmatch(f"process_data.py: error: {tmpfs / 'train'}: cannot write in {tmpfs}/\\.train\\.partial-"
                        f"\\d+: Read-only file system; the existing folder is left as it was\n", proc.stderr)
    assert snapshot(tmpfs / "train") == before


def children(pid):
    """PIDs of the processes whose parent is ``pid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as handle:
                if int(handle.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, IndexError):
            pass
    return found


def start_rendering(out, count=4000):
    """process_data.py rendering ``count`` train images with 2 workers; returns once both render."""
    proc = subprocess.Popen([sys.executable, PROCESS_DATA, "--output_dir", str(out), "--splits", "train",
                             "--train_count", str(count), "--workers", "2", "--quiet"],
                            env={**os.environ, "PYTHONPATH": REPO}, stderr=subprocess.PIPE, text=True)
    staging = out / f".train.partial-{proc.pid}"
    deadline = time.time() + 120
    while not (staging.is_dir() and len(os.listdir(staging)) >= 200):
        assert proc.poll() is None and time.time() < deadline, "rendering did not start"
        time.sleep(0.1)
    return proc, staging


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killed_run_stops_its_workers_and_the_next_run_clears_what_it_left(tmp_path):
    out = tmp_path / "data"
    proc, staging = start_rendering(out)
    workers = children(proc.pid)
    assert len(workers) == 2
    proc.kill()
    proc.wait()
    at_kill = len(os.listdir(staging))
    deadline = time.time() + 30
    while any(running(w) for w in workers) and time.time() < deadline:
        time.sleep(0.01)
    assert not any(running(w) for w in workers), "workers outlived their parent"
    # Orphaned workers used to render the rest of their chunk (dozens of images); now each may at
    # most finish the file it was writing when the parent died.
    assert len(os.listdir(staging)) - at_kill <= len(workers)
    assert staging.is_dir()                              # SIGKILL leaves it; the next run must clear it
    # A staging folder of a live process (a concurrent run) must survive the next run.
    live = out / f".test.partial-{os.getpid()}"
    live.mkdir()
    again = run_py([PROCESS_DATA, "--output_dir", out, "--splits", "train", "--train_count", "12", "--quiet"])
    assert again.returncode == 0, again.stderr
    assert f"process_data.py: removed {staging} (left by process {proc.pid}, now gone)" in again.stderr
    assert sorted(os.listdir(out)) == [live.name, "train"]
    assert len(list_samples(str(out / "train"), CaptchaSpec())) == 12


def test_terminated_run_removes_its_staging_folder_and_keeps_the_old_split(tmp_path):
    out = tmp_path / "data"
    process_data.render_split(str(out / "train"), 10, seed=3, progress=False)
    before = snapshot(out / "train")
    proc, staging = start_rendering(out)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert stderr.strip() == ("process_data.py: error: interrupted by SIGTERM; the split being rendered was not "
                              "written, earlier ones are complete")
    assert sorted(os.listdir(out)) == ["train"] and snapshot(out / "train") == before


def test_a_styled_split_says_so_in_its_manifest(tmp_path):
    for name, extra in (("plain", []), ("blurred", ["--image_blur", "1.5"])):
        proc = run_py([os.path.join(REPO, "process_data.py"), "--output_dir", tmp_path / name, "--splits", "test",
                       "--test_count", "3", "--quiet", *extra])
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert "style" not in read_manifest(str(tmp_path / "plain" / "test"))      # default splits: as before
    assert read_manifest(str(tmp_path / "blurred" / "test"))["style"] == {"image_blur": 1.5}
    assert describe_split(str(tmp_path / "blurred" / "test")).endswith(", style: image_blur=1.5")
    warning = check_compatible(str(tmp_path / "plain" / "test"), str(tmp_path / "blurred" / "test"))
    assert warning.endswith("style default vs {'image_blur': 1.5}")
