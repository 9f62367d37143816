"""process_data.py: names, labels, counts, reproducibility, safe re-runs."""
import os

import pytest
from PIL import Image

import process_data
from src.dataset import parse_label
from conftest import REPO, run_py


def test_names_labels_and_counts(tmp_path):
    rc = process_data.main(["--output_dir", str(tmp_path), "--train_count", "120", "--test_count", "30",
                            "--workers", "2", "--quiet"])
    assert rc == 0
    train = sorted(os.listdir(tmp_path / "train"))
    test = sorted(os.listdir(tmp_path / "test"))
    assert len(train) == 120 and len(test) == 30
    assert train[0].startswith("000-") and train[-1].startswith("119-")   # width = digits of the count
    assert test[0].startswith("00-")
    lengths = {len(parse_label(n)) for n in train}
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


def test_rerun_replaces_folder_without_mixing(tmp_path):
    out = tmp_path / "train"
    first = process_data.render_split(str(out), 50, seed=1, progress=False)
    second = process_data.render_split(str(out), 20, seed=2, progress=False)
    assert sorted(os.listdir(out)) == sorted(second)
    assert len(set(first) - set(second)) > 0                 # the old run had other files, now gone
    assert sorted(os.listdir(tmp_path)) == ["train"]       # no staging folder left behind


def test_refuses_folder_with_foreign_files(tmp_path):
    out = tmp_path / "train"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        process_data.render_split(str(out), 10, progress=False)
    assert (out / "notes.txt").read_text() == "mine"


def test_cli_help_documents_every_option_and_errors_are_one_line(tmp_path):
    proc = run_py([os.path.join(REPO, "process_data.py"), "--help"])
    assert proc.returncode == 0
    for option in ("--output_dir", "--train_count", "--test_count", "--captcha_width", "--captcha_height",
                   "--max_captcha_digits", "--workers", "--seed", "--splits"):
        assert option in proc.stdout
    bad = run_py([os.path.join(REPO, "process_data.py"), "--output_dir", str(tmp_path), "--train_count", "0"])
    assert bad.returncode == 2
    assert bad.stderr.strip() == "process_data.py: error: --train_count must be positive, got 0"
