"""Another alphabet end to end: render, train, eval, predict, export; the checkpoint carries its spec."""
import json
import os

import mindspore as ms
import numpy as np
import pytest

from src.captcha_spec import SPEC_KEY, CaptchaSpec
from conftest import REPO, TINY, TRAIN, last_error_line, run_py

HEX = "0123456789ABCDEF"
EVAL, PREDICT, EXPORT = (os.path.join(REPO, n) for n in ("eval.py", "predict.py", "export.py"))
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")


@pytest.fixture(scope="module")
def hex_run(tmp_path_factory):
    """A 16-character dataset and a tiny training on it (2 epochs of 10 steps)."""
    root = tmp_path_factory.mktemp("hex")
    proc = run_py([os.path.join(REPO, "process_data.py"), "--output_dir", root / "data", "--charset", HEX,
                   "--train_count", "160", "--test_count", "48", "--seed", "3", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_py([TRAIN, "--dataset_path", root / "data" / "train", "--charset", HEX, *TINY, "--epoch_size", "2",
                   "--optimizer", "adam", "--learning_rate", "0.003", "--save_checkpoint_steps", "10"], cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return root, root / "checkpoint" / "warpctc-2_10.ckpt"


def labels_in(folder):
    return [n.split("-", 1)[1][:-4] for n in sorted(os.listdir(folder)) if n.endswith(".png")]


def test_rendered_labels_use_the_whole_alphabet(hex_run):
    root, _ = hex_run
    labels = labels_in(root / "data" / "train")
    assert len(labels) == 160 and all(1 <= len(label) <= 4 and set(label) <= set(HEX) for label in labels)
    assert set("".join(labels)) == set(HEX)                # letters are drawn, not only digits


def test_checkpoint_records_its_spec_and_hidden_size(hex_run):
    _, ckpt = hex_run
    params = ms.load_checkpoint(str(ckpt))
    assert CaptchaSpec.from_json(params[SPEC_KEY]) == CaptchaSpec(charset=HEX)
    assert int(params["hidden_size"].asnumpy()) == 32
    assert params["fc.weight"].shape == (17, 32)


def test_eval_predict_and_export_need_only_the_checkpoint(hex_run, tmp_path):
    root, ckpt = hex_run
    test = root / "data" / "test"
    proc = run_py([EVAL, "--dataset_path", test, "--checkpoint_path", ckpt], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "evaluated 48 images" in proc.stdout and "result: {'WarpCTCAccuracy': " in proc.stdout
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, test, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    texts = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert len(texts) == 48 and set("".join(texts)) <= set(HEX)
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "hex", "--file_format", "ONNX"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "hex.onnx.json").read_text(encoding="utf-8"))
    assert (info["charset"], info["blank_index"], info["input"]["shape"]) == (HEX, 16, [1, 3, 64, 160])
    assert info["output"]["shape"] == [160, 1, 17]
    # the weights-only release keeps the spec: it too is read with no other option
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "hex", "--file_format", "CKPT"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert CaptchaSpec.from_json(ms.load_checkpoint(str(tmp_path / "hex.ckpt"))[SPEC_KEY]).charset == HEX
    proc = run_py([PREDICT, "--checkpoint_path", tmp_path / "hex.ckpt", test, "--quiet"])
    assert [line.split("\t")[1] for line in proc.stdout.splitlines()] == texts


def test_a_flag_that_contradicts_the_checkpoint_is_one_line(hex_run, tmp_path):
    root, ckpt = hex_run
    proc = run_py([EVAL, "--dataset_path", root / "data" / "test", "--checkpoint_path", ckpt,
                   "--charset", "0123456789"], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == (f"eval.py: error: checkpoint {ckpt}: --charset '0123456789' conflicts with the "
                                     f"checkpoint's '{HEX}'; drop the option: the checkpoint says what it reads")


def test_the_old_digits_release_still_reads_digits(hex_run, tmp_path):
    root, _ = hex_run
    assert SPEC_KEY not in ms.load_checkpoint(RELEASED)                  # saved before the spec existed
    proc = run_py([EVAL, "--dataset_path", root / "data" / "test", "--checkpoint_path", RELEASED], cwd=tmp_path)
    assert proc.returncode == 2
    assert "which is not in the alphabet '0123456789'" in last_error_line(proc)


def test_fine_tuning_to_a_smaller_alphabet_keeps_its_characters_rows(hex_run, data_root, tmp_path):
    _, ckpt = hex_run
    # SGD at a negligible rate: what the run starts from is what it saves
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--train_steps", "2", "--learning_rate",
                   "1e-12", "--momentum", "0", "--init_checkpoint", ckpt], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (f"warpctc weights from {ckpt}, and of its dense head (alphabet '{HEX}') the rows of the blank and of "
            "the 10 character(s) this alphabet '0123456789' shares with it; 0 character(s) start fresh; optimizer "
            "and schedule start at step 0") in proc.stdout
    source, tuned = ms.load_checkpoint(str(ckpt)), ms.load_checkpoint(str(tmp_path / "checkpoint" / "warpctc-1_2.ckpt"))
    lstm = [name for name in source if name.startswith("lstm.") and name in tuned]
    assert len(lstm) == 8
    for name in lstm:
        np.testing.assert_allclose(tuned[name].asnumpy(), source[name].asnumpy(), atol=1e-6, err_msg=name)
    assert tuned["fc.weight"].shape == (11, 32)
    rows = list(range(10)) + [16]           # the digits' rows and the blank's: A..F have no class here
    for name in ("fc.weight", "fc.bias"):
        np.testing.assert_allclose(tuned[name].asnumpy(), source[name].asnumpy()[rows], atol=1e-6, err_msg=name)
    assert CaptchaSpec.from_json(tuned[SPEC_KEY]) == CaptchaSpec()


def test_weights_that_cannot_transfer_are_one_line_and_nothing_is_written(hex_run, data_root, tmp_path):
    _, ckpt = hex_run
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", "--batch_size", "16", "--hidden_size", "48",
                   "--init_checkpoint", ckpt], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc).startswith(f"train.py: error: checkpoint {ckpt}: its warpctc network cannot start "
                                            "this warpctc network (hidden_size differs: 32 vs --hidden_size 48)")
    assert not (tmp_path / "checkpoint").exists()


def test_resuming_with_another_alphabet_is_refused(hex_run, tmp_path):
    root, ckpt = hex_run
    relabelled = CaptchaSpec(charset="FEDCBA9876543210")
    proc = run_py([TRAIN, "--dataset_path", root / "data" / "train", *TINY, "--epoch_size", "3",
                   "--charset", relabelled.charset, "--resume_checkpoint", ckpt], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == (f"train.py: error: checkpoint {ckpt}: --charset '{relabelled.charset}' conflicts "
                                     f"with the checkpoint's '{HEX}'; resume with the settings it was trained with")
    assert not (tmp_path / "checkpoint").exists()
