"""train.py end to end on real PNGs: loss falls, checkpoints, exact resume after a kill, bad input."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import mindspore as ms
import pytest

from src.checkpoint.files import checkpoint_files, load_into
from src.config import Config
from src.models import create_network
from conftest import REPO, TINY, TRAIN, last_error_line, run_py
LOSS_LINE = re.compile(r"epoch: (\d+) step: (\d+), loss is ([0-9.eE+-]+)")


def losses(stdout):
    return [(int(e), int(s), float(v)) for e, s, v in LOSS_LINE.findall(stdout)]


def test_loss_falls_and_checkpoints_are_named_and_kept(trained):
    work, stdout = trained
    record = losses(stdout)
    assert [(e, s) for e, s, _ in record] == [(e, s) for e in (1, 2, 3) for s in range(1, 11)]
    first, last = record[0][2], np.mean([v for _, _, v in record[-5:]])
    assert last < 0.2 * first, (first, last)
    names = sorted(os.listdir(work / "checkpoint"))
    # every 4 steps (global steps 4..28) plus the last step; only the newest 3 are kept
    assert [n for n in names if n.endswith(".ckpt")] == ["warpctc-3_10.ckpt", "warpctc-3_4.ckpt", "warpctc-3_8.ckpt"]
    assert checkpoint_files(str(work / "checkpoint"))[-1].path.endswith("warpctc-3_10.ckpt")


def test_checkpoint_loads_back_into_the_network(trained):
    work, _ = trained
    net = create_network(Config(hidden_size=32))
    params = load_into(net, str(work / "checkpoint" / "warpctc-3_10.ckpt"))
    assert int(params["global_step"].asnumpy().reshape(-1)[0]) == 30
    np.testing.assert_array_equal(net.fc.weight.asnumpy(), params["fc.weight"].asnumpy())
    assert "accum.fc.weight" in params                 # SGD momentum state travels with it


def test_resume_after_kill_continues_steps_schedule_and_data(data_root, trained, tmp_path):
    _, reference = trained
    args = [sys.executable, TRAIN, "--dataset_path", str(data_root / "train"), *TINY, "--epoch_size", "3",
            "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "3", "--learning_rate", "0.02"]
    env = dict(os.environ, PYTHONPATH=REPO)
    victim = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_dir = tmp_path / "checkpoint"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and victim.poll() is None:
            if ckpt_dir.exists() and any(n.startswith("warpctc-2_") for n in os.listdir(ckpt_dir)):
                break
            time.sleep(0.05)
    finally:
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
    resume_from = checkpoint_files(str(ckpt_dir))[-1].path
    step = int(ms.load_checkpoint(resume_from)["global_step"].asnumpy().reshape(-1)[0])
    assert 0 < step < 30
    before = {n: (ckpt_dir / n).read_bytes() for n in os.listdir(ckpt_dir) if n.endswith(".ckpt")}
    proc = run_py(args[1:] + ["--resume_checkpoint", str(ckpt_dir)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"at step {step} " in proc.stdout
    resumed = losses(proc.stdout)
    # The step counter, the learning-rate schedule and the data order all continue: the
    # resumed run reproduces the uninterrupted run's losses from the next step on.
    expected = losses(reference)[step:]
    assert [(e, s) for e, s, _ in resumed] == [(e, s) for e, s, _ in expected]
    np.testing.assert_allclose([v for *_, v in resumed], [v for *_, v in expected], rtol=1e-4)
    # Nothing already on disk was overwritten: the resumed run writes under a new prefix, and the
    # killed run's files still there are unchanged. keep_checkpoint_max counts the folder's
    # checkpoints of both runs: the 3 furthest into training remain.
    after = {n for n in os.listdir(ckpt_dir) if n.endswith(".ckpt")}
    assert all(n.startswith("warpctc_1-") for n in after - set(before))
    assert all((ckpt_dir / n).read_bytes() == before[n] for n in after & set(before))
    assert sorted(after) == ["warpctc_1-3_10.ckpt", "warpctc_1-3_4.ckpt", "warpctc_1-3_8.ckpt"]
    assert checkpoint_files(str(ckpt_dir))[-1].path.endswith("-3_10.ckpt")


def test_resume_of_finished_run_trains_nothing(data_root, trained, tmp_path):
    work, _ = trained
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "3",
                   "--resume_checkpoint", work / "checkpoint" / "warpctc-3_10.ckpt"], cwd=tmp_path)
    assert proc.returncode == 0 and "nothing to train" in proc.stdout
    assert not (tmp_path / "checkpoint").exists()


def corrupt_copy(src, dst):
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("case", ["missing", "corrupt", "other_shape"])
def test_bad_resume_checkpoint_is_one_line_error_and_nothing_is_written(data_root, trained, tmp_path, case):
    work, _ = trained
    good = work / "checkpoint" / "warpctc-3_10.ckpt"
    hidden = "32"
    if case == "missing":
        path = tmp_path / "none.ckpt"
        expected = f"checkpoint {path}: does not exist"
    elif case == "corrupt":
        path = tmp_path / "broken.ckpt"
        corrupt_copy(good, path)
        expected = f"checkpoint {path}: corrupt or not a MindSpore checkpoint"
    else:
        path, hidden = good, "48"
        expected = f"checkpoint {path}: --hidden_size 48 conflicts with the checkpoint's 32"
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", "--batch_size", "16", "--hidden_size", hidden,
                   "--resume_checkpoint", path], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc).startswith(f"train.py: error: {expected}")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoint").exists()


def test_unknown_platform_and_missing_dataset(tmp_path):
    proc = run_py([TRAIN, "--dataset_path", tmp_path, "--platform", "TPU"])
    assert proc.returncode == 2 and "invalid choice: 'TPU'" in proc.stderr
    proc = run_py([TRAIN, "--dataset_path", tmp_path / "nope"], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == f"train.py: error: dataset folder {tmp_path / 'nope'}: does not exist"


def test_run_distribute_without_launcher_is_a_clear_error(data_root, tmp_path):
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", "--run_distribute"], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc).startswith("train.py: error: --run_distribute needs a distributed launcher")


def test_learning_curve_csv_survives_a_resume(data_root, tmp_path):
    base = [TRAIN, "--dataset_path", data_root / "train", *TINY, "--eval_dataset_path", data_root / "test",
            "--eval_every", "5", "--eval_images", "40", "--save_checkpoint_steps", "5",
            "--optimizer", "adam", "--learning_rate", "0.003", "--lr_schedule", "cosine", "--warmup_steps", "3"]
    # --train_steps stops mid-epoch (10 steps per epoch here) and saves that step; the resume
    # continues from inside epoch 2.
    first = run_py(base + ["--train_steps", "13"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "10 steps/epoch x 2 epochs = 13 steps" in first.stdout
    assert re.findall(r"epoch: (\d+) step: (\d+),", first.stdout)[-1] == ("2", "3")
    saved = ms.load_checkpoint(str(tmp_path / "checkpoint" / "warpctc-2_3.ckpt"))
    assert int(saved["global_step"].asnumpy().reshape(-1)[0]) == 13
    second = run_py(base + ["--epoch_size", "2", "--resume_checkpoint", tmp_path / "checkpoint"], cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming from " in second.stdout and "at step 13 (epoch 2, step 4 of 10)" in second.stdout
    lines = (tmp_path / "checkpoint" / "learning_curve.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,train_seconds,lr,train_loss,eval_accuracy,eval_cer"
    assert lines[4] == "# resumed at step 13"
    rows = [l.split(",") for l in lines[1:] if not l.startswith("#")]
    assert [int(r[0]) for r in rows] == [5, 10, 13, 15, 20]
    seconds = [float(r[2]) for r in rows]
    assert seconds == sorted(seconds) and seconds[0] > 0       # cumulative across the resume
    for r in rows:
        assert 0 <= float(r[5]) <= 1 and float(r[6]) >= 0 and float(r[4]) > 0
    assert float(rows[-1][4]) < float(rows[0][4])                # training loss falls


def test_train_steps_inside_an_epoch_are_refused_with_dataset_sink_mode(data_root, tmp_path):
    # 160 images at batch 16: 10 steps per epoch; a sunk epoch cannot stop at step 13.
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY,
                   "--train_steps", "13", "--dataset_sink_mode", "on"], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == ("train.py: error: --train_steps 13 must be a multiple of the 10 steps per "
                                     "epoch with dataset sink mode (or use --dataset_sink_mode off)")
    assert not (tmp_path / "checkpoint").exists()


def test_init_checkpoint_starts_a_new_training_from_the_weights(data_root, trained, tmp_path):
    work, reference = trained
    source = work / "checkpoint" / "warpctc-3_10.ckpt"
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "1",
                   "--learning_rate", "0.02", "--init_checkpoint", source], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"network weights from {source}; optimizer and schedule start at step 0" in proc.stdout
    record = losses(proc.stdout)
    # A new training: steps count from 1 again (the source is at global step 30) ...
    assert [(e, s) for e, s, _ in record] == [(1, s) for s in range(1, 11)]
    saved = ms.load_checkpoint(str(tmp_path / "checkpoint" / "warpctc-1_10.ckpt"))
    assert int(saved["global_step"].asnumpy().reshape(-1)[0]) == 10
    # ... that starts from the trained weights: its first loss is the trained model's level,
    # far below the first loss of a start from scratch.
    scratch_first = losses(reference)[0][2]
    trained_level = np.mean([v for *_, v in losses(reference)[-5:]])
    assert record[0][2] < 0.3 * scratch_first and record[0][2] < 3 * trained_level, (record[0], scratch_first)
    # the source checkpoint is untouched
    assert int(ms.load_checkpoint(str(source))["global_step"].asnumpy().reshape(-1)[0]) == 30


def test_init_checkpoint_errors_are_one_line_and_nothing_is_written(data_root, trained, tmp_path):
    work, _ = trained
    good = work / "checkpoint" / "warpctc-3_10.ckpt"
    base = [TRAIN, "--dataset_path", data_root / "train", *TINY]
    proc = run_py(base + ["--init_checkpoint", good, "--resume_checkpoint", good], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc).startswith("train.py: error: --init_checkpoint starts a new training and "
                                            "--resume_checkpoint continues one: give only one of them")
    proc = run_py(base + ["--init_checkpoint", tmp_path / "none.ckpt"], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == f"train.py: error: checkpoint {tmp_path / 'none.ckpt'}: does not exist"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoint").exists()
