"""Checkpoints under faults, each reproduced with real files: a folder shared by two trainings
(pruning, --resume_checkpoint FOLDER), a damaged byte (CRC), a file saved without a CRC, the
released files' CRCs, export's CRC and batch bound, and runs too long for a per-step table."""
import binascii
import os
import re
import shutil
import tracemalloc

import mindspore as ms
import pytest

import mindspore_hub_conf
import train
from src.checkpoint.files import read_checkpoint
from src.checkpoint.finetune import load_for_finetune
from src.checkpoint.model import load_network
from src.checkpoint.resume import resume_point
from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.lr_schedule import MAX_STEPS, get_lr
from src.models import create_network
from conftest import REPO, TINY, TRAIN, run_py, snapshot

EXPORT = os.path.join(REPO, "export.py")
PREDICT = os.path.join(REPO, "predict.py")
RELEASED = [os.path.join(REPO, "pretrained", n) for n in ("warpctc.ckpt", "warpctc_alnum.ckpt", "warpctc_robust.ckpt")]
RECORD = {"batch_size": 16, "device_num": 1, "steps_per_epoch": 10}      # the `trained` fixture's run
CRC = "damaged: its contents do not match the CRC it was saved with"


def error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.strip() and "[WARNING]" not in line]


def assert_one_line_error(proc, script, expected):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert error_lines(proc) == [f"{script}: error: {expected}"]


def checkpoints(folder):
    return sorted(n for n in os.listdir(folder) if n.endswith(".ckpt"))


def flip_a_byte_of_fc_weight(source, target):
    """A copy of ``source`` with one bit of the dense layer's weights flipped (its CRC left as it was)."""
    data = bytearray(source.read_bytes())
    weights = ms.load_checkpoint(str(source))["fc.weight"].asnumpy().tobytes()
    at = data.find(weights)
    assert at > 0 and data.find(weights, at + 1) < 0
    data[at + len(weights) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def has_matching_crc(path):
    data = open(path, "rb").read()
    return data[-17:-10] == b"crc_num" and int.from_bytes(data[-10:], "big") == binascii.crc32(data[:-17])


# ---------------------------------------------------------------- a folder shared by two trainings

def test_a_new_training_never_prunes_another_trainings_checkpoints_and_a_folder_resume_asks_which(
        data_root, trained, tmp_path):
    work, _ = trained
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    for name in ("warpctc-3_4.ckpt", "warpctc-3_8.ckpt", "warpctc-3_10.ckpt"):    # another training's, steps 24-30
        shutil.copy(work / "checkpoint" / name, folder)
    theirs = snapshot(folder)
    base = [TRAIN, "--dataset_path", data_root / "train", *TINY, "--save_checkpoint_path", folder]
    proc = run_py(base + ["--epoch_size", "1", "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "2"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    notices = [line for line in proc.stdout.splitlines() if line.startswith("keeping ")]
    assert notices == [f"keeping 3 checkpoint(s) of other trainings in {folder} (e.g. warpctc-3_10.ckpt): "
                       "--keep_checkpoint_max counts only this training's"]
    # Its own oldest (step 4) was pruned to keep 2; the other training's files are all there, unchanged.
    assert checkpoints(folder) == sorted(list(theirs) + ["warpctc_1-1_8.ckpt", "warpctc_1-1_10.ckpt"])
    assert all((folder / name).read_bytes() == data for name, data in theirs.items())
    # Both trainings fit a resume with these settings: the folder alone does not say which to continue.
    before = snapshot(folder)
    proc = run_py(base + ["--epoch_size", "3", "--resume_checkpoint", folder], cwd=tmp_path)
    assert_one_line_error(proc, "train.py", f"checkpoint folder {folder}: holds checkpoints of 2 trainings that fit "
                                            "this run (the furthest of each: warpctc-3_10.ckpt, warpctc_1-1_10.ckpt); "
                                            "give --resume_checkpoint the one to continue")
    assert snapshot(folder) == before


def test_a_folder_resume_skips_what_cannot_continue_the_run_and_says_so(trained, tmp_path):
    work, _ = trained
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    source = work / "checkpoint" / "warpctc-3_10.ckpt"
    shutil.copy(source, folder)
    params = ms.load_checkpoint(str(source))
    # Further along, but trained at batch 32 (its step is another place in the data) ...
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items() if isinstance(v, ms.Parameter)
                        and k != "batch_size"], str(folder / "warpctc-5_2.ckpt"),
                       append_dict={"batch_size": 32, "captcha_spec": params["captcha_spec"]}, crc_check=True)
    # ... and furthest, but damaged.
    flip_a_byte_of_fc_weight(source, folder / "warpctc-6_1.ckpt")
    cfg = Config(hidden_size=32)
    path, notice = resume_point(str(folder), RECORD, cfg)
    assert path == str(folder / "warpctc-3_10.ckpt")
    assert notice == (f"checkpoint folder {folder}: skipped 2 checkpoint(s) that cannot continue this run: "
                      f"warpctc-6_1.ckpt ({CRC}), warpctc-5_2.ckpt (--batch_size 16 differs from the checkpoint's 32)")
    with pytest.raises(ValueError) as err:
        resume_point(str(folder), RECORD, Config(hidden_size=48))
    assert str(err.value) == (f"checkpoint folder {folder}: none of its 3 checkpoint(s) can continue this run: "
                              f"warpctc-6_1.ckpt ({CRC}) and 2 more")


# ---------------------------------------------------------------- CRCs

def test_a_damaged_checkpoint_is_refused_by_every_reader_naming_the_file(data_root, trained, tmp_path):
    work, _ = trained
    damaged = flip_a_byte_of_fc_weight(work / "checkpoint" / "warpctc-3_10.ckpt", tmp_path / "damaged.ckpt")
    with pytest.raises(ValueError):
        ms.load_checkpoint(str(damaged), crc_check=True)          # MindSpore's own check agrees (in other words)
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "4",
                   "--resume_checkpoint", damaged], cwd=tmp_path)
    assert_one_line_error(proc, "train.py", f"checkpoint {damaged}: {CRC}")
    assert not (tmp_path / "checkpoint").exists()
    proc = run_py([PREDICT, "--checkpoint_path", damaged, data_root / "test"], cwd=tmp_path)
    assert_one_line_error(proc, "predict.py", f"checkpoint {damaged}: {CRC}")
    assert proc.stdout == ""
    # eval.py, export.py and the hub entry read through the same function
    for read in (lambda: load_network(str(damaged), Config()),
                 lambda: load_for_finetune(create_network(Config(hidden_size=32)), str(damaged), CaptchaSpec()),
                 lambda: mindspore_hub_conf.create_network("warpctc", checkpoint_path=str(damaged))):
        with pytest.raises(ValueError) as err:
            read()
        assert str(err.value) == f"checkpoint {damaged}: {CRC}"


def test_a_checkpoint_saved_without_a_crc_still_loads_and_says_so_once(trained, tmp_path, capsys):
    work, _ = trained
    source = work / "checkpoint" / "warpctc-3_10.ckpt"
    params = ms.load_checkpoint(str(source))
    old = tmp_path / "old.ckpt"
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items() if isinstance(v, ms.Parameter)], str(old))
    assert not has_matching_crc(old)
    capsys.readouterr()
    for _ in range(2):
        net, _ = load_network(str(old), Config())
    assert (net.fc.weight.asnumpy() == params["fc.weight"].asnumpy()).all()
    assert capsys.readouterr().err == (f"warning: checkpoint {old}: saved without a CRC, so damage to it cannot be "
                                       "detected (export.py --file_format CKPT re-saves a model with one)\n")


@pytest.mark.parametrize("path", RELEASED, ids=os.path.basename)
def test_released_checkpoints_carry_a_matching_crc(path, capsys):
    assert has_matching_crc(path)
    assert read_checkpoint(path)["fc.weight"].shape[1] == 512
    assert capsys.readouterr().err == ""


def test_export_writes_a_crc_and_refuses_a_batch_beyond_its_bound(trained, tmp_path):
    work, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    proc = run_py([EXPORT, "--checkpoint_path", work / "checkpoint" / "warpctc-3_10.ckpt", "--file_format", "CKPT",
                   "--file_name", out / "model", "--export_batch_size", "100000"])
    assert_one_line_error(proc, "export.py", "--export_batch_size 100000 is more than 1024, the largest batch "
                                             "export.py builds (its input is allocated whole); feed bigger sets in "
                                             "batches")
    assert os.listdir(out) == []
    proc = run_py([EXPORT, "--checkpoint_path", work / "checkpoint" / "warpctc-3_10.ckpt", "--file_format", "CKPT",
                   "--file_name", out / "model"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert has_matching_crc(out / "model.ckpt")
    assert "1 to 1024" in run_py([EXPORT, "--help"]).stdout


# ---------------------------------------------------------------- run lengths

def test_rates_are_computed_for_the_run_steps_only_however_long_an_epoch():
    tracemalloc.start()
    try:
        rates = get_lr(30, 10_000_000, 0.01, total_steps=3)      # the old loop listed the whole epoch first
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rates.tolist() == pytest.approx([0.01] * 3) and peak < 1_000_000
    with pytest.raises(ValueError, match=f"more than the {MAX_STEPS:,} a run may train"):
        get_lr(1, MAX_STEPS + 1, 0.01)


@pytest.mark.parametrize("options, expected", [
    (["--synthetic_images", "100000000000", "--train_steps", "2"],
     "--synthetic_images 100,000,000,000 is more than the 10,000,000 captchas an epoch may hold (MindSpore lists "
     "an epoch's sample indices in memory); train more epochs (--epoch_size) instead"),
    (["--dataset_path", "{train}", "--train_steps", "1000001"],
     "--train_steps 1,000,001 is more than the 1,000,000 steps a run may train (one learning rate per step is kept "
     "in every checkpoint)"),
])
def test_options_beyond_what_a_run_can_hold_are_one_line_before_any_work(data_root, tmp_path, options, expected):
    options = [o.format(train=data_root / "train") for o in options]
    proc = run_py([TRAIN, *TINY, *options], cwd=tmp_path)
    assert_one_line_error(proc, "train.py", expected)
    assert os.listdir(tmp_path) == []


def test_epochs_beyond_the_step_bound_are_refused_naming_the_options(tmp_path):
    with pytest.raises(ValueError) as err:
        train.check_run_length(Config(synthetic_images=5_000_000, batch_size=16), 312_500, None)
    assert str(err.value) == ("--epoch_size 30 x 312,500 steps per epoch (--synthetic_images 5,000,000 at --batch_size "
                              "16) is 9,375,000 steps, more than the 1,000,000 a run may train (one learning rate per "
                              "step is kept in every checkpoint); lower --epoch_size, or end the run sooner with "
                              "--train_steps")
    train.check_run_length(Config(synthetic_images=5_000_000, batch_size=16, train_steps=10), 312_500, None)


def test_a_run_without_checkpoints_does_not_name_a_checkpoint_folder(data_root, tmp_path):
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--train_steps", "2",
                   "--save_checkpoint", "false"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"training finished in [0-9.]+ s; no checkpoints saved \(--save_checkpoint false\)", last)
    assert not (tmp_path / "checkpoint").exists()
