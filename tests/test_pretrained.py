"""The released model: pretrained/warpctc.ckpt reads captchas it has never seen."""
import hashlib
import os
import re

import process_data
from src.dataset import parse_label
from src.metric import summarize
from conftest import REPO, run_bash, run_py

CKPT = os.path.join(REPO, "pretrained", "warpctc.ckpt")


def readme_sha256():
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    match = re.search(r"SHA-256[^`]*`([0-9a-f]{64})`", text)
    assert match, "README.md must state the released checkpoint's SHA-256"
    return match.group(1)


def test_released_checkpoint_matches_the_readme_hash():
    with open(CKPT, "rb") as handle:
        assert hashlib.sha256(handle.read()).hexdigest() == readme_sha256()


def test_released_checkpoint_reads_fresh_captchas(tmp_path):
    # A seed never used for the train or test sets: captchas the model has never seen.
    process_data.render_split(str(tmp_path / "fresh"), 300, seed=20261125, split="fresh", workers=2,
                              progress=False)
    proc = run_py([os.path.join(REPO, "predict.py"), "--checkpoint_path", CKPT, tmp_path / "fresh"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert len(lines) == 300
    result = summarize([digits for _, digits in lines], [parse_label(path) for path, _ in lines])
    assert result["WarpCTCAccuracy"] >= 0.97, result
    assert result["CER"] <= 0.02, result


def test_demo_script_arguments():
    proc = run_bash([os.path.join(REPO, "scripts", "run_demo.sh"), "a", "b"])
    assert proc.returncode == 2 and proc.stderr.startswith("Usage: bash run_demo.sh [CHECKPOINT_PATH]")
    proc = run_bash([os.path.join(REPO, "scripts", "run_demo.sh"), "/nonexistent.ckpt"])
    assert proc.returncode == 2 and proc.stderr.strip() == "run_demo.sh: error: /nonexistent.ckpt: no such file"
