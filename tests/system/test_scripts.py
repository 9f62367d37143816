"""The launchers (run_standalone_train.sh, run_process_data.sh) and export.py as a user runs them,
including on a full disk and in read-only or missing folders."""
import os
import re
import shutil
import time

import pytest

from conftest import REPO, TINY, last_error_line, remount_ro, run_bash, run_py, running, snapshot

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


def test_standalone_foreground_after_train_options_and_no_dry_run(tmp_path):
    # --foreground anywhere is the launcher's; --dry_run (the distributed launchers') is refused, not started.
    fake = tmp_path / "python3"
    fake.write_text('#!/usr/bin/env bash\necho "train.py args: ${*:2}"\n')
    fake.chmod(0o755)
    run_dir = tmp_path / "run"
    proc = run_bash([STANDALONE, "-", "CPU", "--synthetic_images", "16", "--foreground"],
                    env={"WARPCTC_RUN_DIR": str(run_dir), "PYTHON": str(fake)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "train.py args: --platform CPU --synthetic_images 16"
    assert "started in the background" not in proc.stdout
    shutil.rmtree(run_dir)
    for option, message in (("--dry_run", "--dry_run is an option of the distributed launchers "
                                          "(run_distribute_train*.sh); this one has no dry run and starts train.py "
                                          "at once"),
                            ("--nodes=2", "--nodes is an option of run_distribute_train_cpu.sh and "
                                          "run_distribute_train_for_gpu.sh, not of this launcher")):
        proc = run_bash([STANDALONE, "-", "CPU", "--synthetic_images", "16", option],
                        env={"WARPCTC_RUN_DIR": str(run_dir), "PYTHON": str(fake)})
        assert (proc.returncode, proc.stderr) == (2, f"run_standalone_train.sh: error: {message}\n")
        assert proc.stdout == "" and not run_dir.exists()


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


def test_standalone_failure_status_passes_through_and_every_run_keeps_the_earlier_logs(data_root, tmp_path):
    log = tmp_path / "train.log"
    runs = []
    for foreground in (True, True, False):
        proc = run_bash([STANDALONE, data_root / "train", "CPU", *(["--foreground"] if foreground else []),
                         "--batch_size", "1000"], env={"WARPCTC_RUN_DIR": str(tmp_path)})
        runs.append(proc)
        if foreground:
            assert proc.returncode == 2
        else:
            assert proc.returncode == 0, proc.stderr
            pid = int(re.search(r"started in the background as PID (\d+)", proc.stdout).group(1))
            deadline = time.time() + 120
            while running(pid) and time.time() < deadline:
                time.sleep(0.2)
            assert not running(pid), "the background training did not stop"
    assert f"log: {log}\n" in runs[0].stdout
    assert f"log: {log} (appending: earlier runs stay above)\n" in runs[1].stdout
    text = log.read_text()
    # One dated header per run, each followed by that run's own failure.
    headers = re.findall(r"^===== \d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} run_standalone_train.sh: .*"
                         r"train\.py --dataset_path .* --batch_size 1000$", text, flags=re.M)
    assert len(headers) == 3, text[-3000:]
    sections = re.split(r"^===== .*$", text, flags=re.M)[1:]
    assert all("fewer than one batch of 1000" in section for section in sections), text[-3000:]


def test_standalone_run_folder_that_cannot_be_written_is_one_line(data_root, tmpfs):
    remount_ro(tmpfs)
    proc = run_bash([STANDALONE, data_root / "train", "CPU", "--foreground"], env={"WARPCTC_RUN_DIR": str(tmpfs)})
    assert proc.returncode == 2
    assert proc.stderr == f"run_standalone_train.sh: error: cannot write the log {tmpfs}/train.log\n"
    proc = run_bash([STANDALONE, data_root / "train", "CPU"], env={"WARPCTC_RUN_DIR": str(tmpfs / "run")})
    assert proc.returncode == 2
    assert proc.stderr == f"run_standalone_train.sh: error: cannot create the working folder {tmpfs}/run\n"


def test_process_data_launcher_renders_both_splits(tmp_path):
    script = os.path.join(REPO, "scripts", "run_process_data.sh")
    proc = run_bash([script, "--help"])
    assert proc.returncode == 0 and "--train_count" in proc.stdout
    proc = run_bash([script, "--output_dir", tmp_path, "--train_count", "12", "--test_count", "5", "--quiet"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "train"))[-1] == "manifest.json"
    assert len(os.listdir(tmp_path / "train")) == 12 + 1 and len(os.listdir(tmp_path / "test")) == 5 + 1


EXPORT = os.path.join(REPO, "export.py")
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")


def test_export_into_a_missing_or_read_only_folder_is_one_line(tmp_path, tmpfs):
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", tmp_path / "nope" / "w"])
    assert proc.returncode == 2
    assert last_error_line(proc) == (f"export.py: error: --file_name {tmp_path / 'nope' / 'w.mindir'}: "
                                     f"folder {tmp_path / 'nope'} does not exist")
    assert not (tmp_path / "nope").exists()
    remount_ro(tmpfs)
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", tmpfs / "w", "--file_format", "ONNX"])
    assert proc.returncode == 2
    assert last_error_line(proc) == (f"export.py: error: --file_name {tmpfs / 'w.onnx'}: cannot write in {tmpfs}: "
                                     f"Read-only file system")
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("file_format", ["MINDIR", "CKPT"])
def test_export_on_a_full_disk_is_one_line_and_keeps_the_earlier_file(tmpfs, file_format):
    # The released model (14 MB) cannot fit the 2 MB disk.
    earlier = tmpfs / f"w.{file_format.lower()}"
    earlier.write_bytes(b"an earlier export")
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", tmpfs / "w", "--file_format", file_format])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "CRITICAL" not in proc.stderr
    assert last_error_line(proc) == (f"export.py: error: {earlier}: cannot write the export: No space left on device; "
                                     f"the existing file is left as it was")
    assert snapshot(tmpfs) == {earlier.name: b"an earlier export"}      # no temporary file left either


def test_export_leaves_the_folder_permissions_alone(tmp_path):
    # MindSpore's ONNX writer chmods the folder it writes in to 0700.
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o755)
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", out / "w.onnx", "--file_format", "ONNX"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(os.listdir(out)) == ["w.onnx", "w.onnx.json"]
    assert out.stat().st_mode & 0o777 == 0o755


def test_the_try_it_adaptation_runs_end_to_end_with_a_tiny_step_count(tmp_path):
    # README's self-contained try: render a held-out style, read it zero-shot, adapt, read again.
    proc = run_bash([os.path.join(REPO, "scripts", "run_try_adapt.sh"), "2"],
                    env={"WARPCTC_RUN_DIR": str(tmp_path / "try")}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:] + proc.stdout[-2000:]
    results = re.findall(r"result: \{'WarpCTCAccuracy': ([0-9.]+)", proc.stdout)
    assert len(results) == 2, proc.stdout[-2000:]
    assert "fine-tuning to " in proc.stdout and "1-5 characters" in proc.stdout
    adapted = re.search(r"== adapted: (\S+\.ckpt)", proc.stdout).group(1)
    assert os.path.isfile(adapted) and adapted.startswith(str(tmp_path / "try" / "checkpoint"))
    reads = [line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 2]
    assert len(reads) == 2 and all(path.endswith(".png") for path, _, _ in reads)
    bad = run_bash([os.path.join(REPO, "scripts", "run_try_adapt.sh"), "many"])
    assert bad.returncode != 0 and "STEPS must be a positive whole number, got 'many'" in bad.stderr
