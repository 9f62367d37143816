"""scripts/run_standalone_train.sh and run_process_data.sh as a user runs them."""
import os

import pytest

from conftest import REPO, TINY, run_bash

STANDALONE = os.path.join(REPO, "scripts", "run_standalone_train.sh")


@pytest.mark.parametrize("args, message", [
    ([], "Usage: bash run_standalone_train.sh [DATASET_PATH] [PLATFORM]"),
    (["only_one"], "Usage: bash run_standalone_train.sh [DATASET_PATH] [PLATFORM]"),
    (["/nonexistent/data", "CPU"], "run_standalone_train.sh: error: /nonexistent/data: no such folder"),
])
def test_standalone_argument_errors(args, message, tmp_path):
    proc = run_bash([STANDALONE, *args], env={"WARPCTC_RUN_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(message)


def test_standalone_unknown_platform(data_root, tmp_path):
    proc = run_bash([STANDALONE, data_root / "train", "TPU"], env={"WARPCTC_RUN_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("run_standalone_train.sh: error: unknown platform 'TPU' "
                                   "(expected one of: Ascend GPU CPU)")


def test_standalone_foreground_run_with_relative_path(data_root, tmp_path):
    run_dir = tmp_path / "my run"                       # a space in the path must not break anything
    proc = run_bash([STANDALONE, "train", "CPU", "--foreground", *TINY, "--epoch_size", "1",
                     "--save_checkpoint_steps", "5"], cwd=data_root, env={"WARPCTC_RUN_DIR": str(run_dir)})
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"dataset: {data_root / 'train'}" in proc.stdout
    log = (run_dir / "train.log").read_text()
    assert "epoch: 1 step: 10, loss is" in log
    assert sorted(n for n in os.listdir(run_dir / "checkpoint") if n.endswith(".ckpt")) == \
        ["warpctc-1_10.ckpt", "warpctc-1_5.ckpt"]


def test_standalone_failure_status_passes_through(data_root, tmp_path):
    proc = run_bash([STANDALONE, data_root / "train", "CPU", "--foreground", "--batch_size", "1000"],
                    env={"WARPCTC_RUN_DIR": str(tmp_path)})
    assert proc.returncode == 2
    assert "fewer than one batch of 1000" in (tmp_path / "train.log").read_text()


def test_process_data_launcher_renders_both_splits(tmp_path):
    script = os.path.join(REPO, "scripts", "run_process_data.sh")
    proc = run_bash([script, "--help"])
    assert proc.returncode == 0 and "--train_count" in proc.stdout
    proc = run_bash([script, "--output_dir", tmp_path, "--train_count", "12", "--test_count", "5", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert len(os.listdir(tmp_path / "train")) == 12 and len(os.listdir(tmp_path / "test")) == 5
