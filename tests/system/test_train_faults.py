"""train.py under faults, each reproduced for real: a second run into a folder in use, a full or
read-only disk, resumes with other settings, Ctrl-C / SIGTERM, a kill in the middle of a save,
and a platform whose MindSpore backend cannot load."""
import contextlib
import ctypes
import os
import re
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

from conftest import REPO, TINY, TRAIN, mounted_tmpfs, remount_ro, run_py

LOSS_LINE = re.compile(r"epoch: (\d+) step: (\d+), loss is ([0-9.eE+-]+)")
PROGRESS_LINE = re.compile(r"step (\d+) of (\d+): ([0-9.]+) s/step, lr ([0-9.eE+-]+), (\d+):(\d\d):(\d\d) left")
ENV = dict(os.environ, PYTHONPATH=REPO)


def losses(stdout):
    return [(int(e), int(s), float(v)) for e, s, v in LOSS_LINE.findall(stdout)]


def global_step(path):
    return int(ms.load_checkpoint(str(path))["global_step"].asnumpy().reshape(-1)[0])


def checkpoints(folder):
    """The finished checkpoints: a save in flight is a hidden ``.<name>.ckpt`` until MindSpore renames it."""
    return sorted(n for n in os.listdir(folder) if n.endswith(".ckpt") and not n.startswith("."))


def start(args, cwd, log_dir):
    """A training in the background (its own session), output to files: a pipe could fill up and stall it."""
    out = open(log_dir / "stdout.txt", "w")
    err = open(log_dir / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, TRAIN] + [str(a) for a in args], cwd=cwd, env=ENV, stdout=out,
                            stderr=err, start_new_session=True)
    out.close()
    err.close()
    return proc


def wait_for(condition, proc, timeout=240):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        assert proc.poll() is None, f"training ended early with status {proc.returncode}"
        time.sleep(0.05)
    pytest.fail("timed out waiting for the training")


@contextlib.contextmanager
def killed_at_exit(proc):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def assert_one_line_error(proc, expected):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "[WARNING]" not in l]
    assert lines == [f"train.py: error: {expected}"]


# ---------------------------------------------------------------- 1. one run per folder

def test_second_run_into_a_folder_in_use_is_refused_and_a_killed_runs_lock_is_not(data_root, tmp_path):
    folder = tmp_path / "checkpoint"
    base = ["--dataset_path", data_root / "train", *TINY, "--save_checkpoint_path", folder]
    with killed_at_exit(start(base + ["--epoch_size", "300", "--save_checkpoint_steps", "4"], tmp_path,
                              tmp_path)) as first:
        wait_for(lambda: folder.exists() and checkpoints(folder), first)
        second = run_py([TRAIN, *base, "--epoch_size", "1"], cwd=tmp_path)
        assert_one_line_error(second, f"checkpoint folder {folder}: in use by another training (pid {first.pid}); "
                                      "wait for it to end or choose another --save_checkpoint_path")
        # the refused run wrote nothing: every file is the first run's (a save in flight is the hidden
        # ".warpctc-<epoch>_<step>.ckpt" MindSpore renames once written)
        assert all(n.lstrip(".").startswith("warpctc-") for n in os.listdir(folder) if n.endswith(".ckpt"))
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    # The killed run's lock file (with its pid) is still there, and does not stop the next run.
    assert (folder / ".train.lock").read_text().strip() == str(first.pid)
    third = run_py([TRAIN, *base, "--epoch_size", "1"], cwd=tmp_path)
    assert third.returncode == 0, third.stderr[-2000:]
    assert "warpctc_1-1_10.ckpt" in checkpoints(folder)


# ---------------------------------------------------------------- 2. full disk, read-only disk, path is a file

def test_full_disk_keeps_the_last_good_checkpoint_and_says_so_in_one_line(data_root, tmp_path):
    with mounted_tmpfs(tmp_path / "disk", "700k") as disk:      # room for one 454 KB checkpoint, not two
        folder = disk / "checkpoint"
        proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "1",
                       "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "1",
                       "--save_checkpoint_path", folder], cwd=tmp_path)
        assert_one_line_error(proc, f"checkpoint {folder / 'warpctc-1_8.ckpt'}: cannot be saved "
                                    "(No space left on device)")
        assert [s for _, s, _ in losses(proc.stdout)] == list(range(1, 9))
        # The step-4 checkpoint was not deleted to make room, and no partial file is left.
        assert sorted(os.listdir(folder)) == [".train.lock", "warpctc-1_4.ckpt"]
        assert global_step(folder / "warpctc-1_4.ckpt") == 4          # complete: loads with its CRC


def test_read_only_folder_and_file_paths_are_one_line_errors(data_root, trained, tmp_path):
    work, _ = trained
    base = [TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "1"]
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    proc = run_py(base + ["--save_checkpoint_path", a_file], cwd=tmp_path)
    assert_one_line_error(proc, f"checkpoint folder {a_file}: is a file, not a folder (--save_checkpoint_path)")
    assert a_file.read_text() == "keep me\n"
    with mounted_tmpfs(tmp_path / "disk", "4m") as disk:
        (disk / "checkpoint").mkdir()
        shutil.copy(work / "checkpoint" / "warpctc-3_4.ckpt", disk / "checkpoint")
        (disk / "curve.csv").write_text("step,epoch,train_seconds,lr,train_loss,eval_accuracy,eval_cer\n")
        remount_ro(disk)
        # resuming into a read-only folder
        proc = run_py(base + ["--epoch_size", "3", "--save_checkpoint_path", disk / "checkpoint",
                              "--resume_checkpoint", disk / "checkpoint"], cwd=tmp_path)
        assert_one_line_error(proc, f"checkpoint folder {disk / 'checkpoint'}: cannot be written "
                                    "(Read-only file system)")
        # a learning curve that cannot be written stops the run before its first step
        proc = run_py(base + ["--eval_dataset_path", data_root / "test", "--eval_images", "16",
                              "--save_checkpoint_path", tmp_path / "checkpoint", "--curve_csv", disk / "curve.csv"],
                      cwd=tmp_path)
        assert_one_line_error(proc, f"learning curve {disk / 'curve.csv'}: cannot be written (Read-only file system)")
        assert not losses(proc.stdout)
        assert checkpoints(disk / "checkpoint") == ["warpctc-3_4.ckpt"]


# ---------------------------------------------------------------- 3. keep_checkpoint_max over resumes

def test_keep_checkpoint_max_counts_the_checkpoints_of_every_run_of_the_training(data_root, tmp_path):
    base = [TRAIN, "--dataset_path", data_root / "train", *TINY, "--save_checkpoint_steps", "2",
            "--keep_checkpoint_max", "3"]
    folder = tmp_path / "checkpoint"
    for steps, kept in ((6, ["warpctc-1_2.ckpt", "warpctc-1_4.ckpt", "warpctc-1_6.ckpt"]),
                        (12, ["warpctc_1-1_10.ckpt", "warpctc_1-1_8.ckpt", "warpctc_1-2_2.ckpt"]),
                        (16, ["warpctc_1-2_2.ckpt", "warpctc_2-2_4.ckpt", "warpctc_2-2_6.ckpt"])):
        resume = ["--resume_checkpoint", folder] if folder.exists() else []
        proc = run_py(base + ["--train_steps", steps] + resume, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        # the newest 3 by training position, whichever of its runs wrote them
        assert checkpoints(folder) == kept
        assert "keeping " not in proc.stdout            # the folder holds no other training's checkpoint


# ---------------------------------------------------------------- 4. resume with other settings

def test_resume_with_another_batch_size_or_dataset_size_is_refused(data_root, trained, tmp_path):
    work, _ = trained
    ckpt = work / "checkpoint" / "warpctc-3_4.ckpt"          # step 24 of a 160-image run at batch 16
    base = [TRAIN, "--hidden_size", "32", "--epoch_size", "3", "--resume_checkpoint", ckpt]
    proc = run_py(base + ["--dataset_path", data_root / "train", "--batch_size", "32"], cwd=tmp_path)
    assert_one_line_error(proc, f"checkpoint {ckpt}: --batch_size 32 differs from the checkpoint's 16; resume "
                                "with the settings it was trained with")
    smaller = tmp_path / "smaller"
    smaller.mkdir()
    for name in sorted(os.listdir(data_root / "train"))[:96]:
        shutil.copy(data_root / "train" / name, smaller)
    proc = run_py(base + ["--dataset_path", smaller, "--batch_size", "16"], cwd=tmp_path)
    assert_one_line_error(proc, f"checkpoint {ckpt}: steps per epoch 6 differs from the checkpoint's 10 (another "
                                "dataset size?); resume with the settings it was trained with")
    assert not (tmp_path / "checkpoint").exists()                # nothing written


def test_checkpoint_without_run_record_resumes_as_before(data_root, trained, tmp_path):
    work, reference = trained
    params = ms.load_checkpoint(str(work / "checkpoint" / "warpctc-3_4.ckpt"))
    assert {k: int(params[k].asnumpy()) for k in ("batch_size", "device_num", "steps_per_epoch")} == \
        {"batch_size": 16, "device_num": 1, "steps_per_epoch": 10}
    older = tmp_path / "older.ckpt"
    # as saved before the run record (and the model record) existed
    ms.save_checkpoint([{"name": k, "data": v} for k, v in params.items()
                        if k not in ("batch_size", "device_num", "steps_per_epoch", "hidden_size")
                        and isinstance(v, ms.Parameter)], str(older))
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "3", "--learning_rate", "0.02",
                   "--resume_checkpoint", older], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {older} at step 24 " in proc.stdout
    assert f"warning: checkpoint {older}: saved without a CRC, so damage to it cannot be detected" in proc.stderr
    np.testing.assert_allclose([v for *_, v in losses(proc.stdout)], [v for *_, v in losses(reference)[24:]],
                               rtol=1e-4)


# ---------------------------------------------------------------- 5. Ctrl-C and SIGTERM

@pytest.mark.parametrize("sig, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_prints_the_last_checkpoint_and_the_resume_command(data_root, tmp_path, sig, status):
    folder = tmp_path / "checkpoint"
    args = ["--dataset_path", data_root / "train", *TINY, "--epoch_size", "300", "--save_checkpoint_steps", "4"]
    with killed_at_exit(start(args, tmp_path, tmp_path)) as proc:
        wait_for(lambda: folder.exists() and len(checkpoints(folder)) >= 2, proc)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == status
    stderr = (tmp_path / "stderr.txt").read_text()
    lines = [l for l in stderr.splitlines() if l.strip() and "[WARNING]" not in l]
    assert len(lines) == 1, stderr[-2000:]
    match = re.fullmatch(rf"train\.py: interrupted by {sig.name} after step (\d+) of 3000; last checkpoint (\S+) "
                         r"\(step (\d+)\); resume with: (.+)", lines[0])
    assert match, lines[0]
    step, path, saved, command = int(match[1]), match[2], int(match[3]), match[4]
    assert saved <= step and saved % 4 == 0 and global_step(path) == saved
    # the command it prints resumes there (cut short here with --train_steps)
    words = shlex.split(command)
    assert words[:2] == ["python", TRAIN] and words[-2:] == ["--resume_checkpoint", path]
    resumed = run_py(words[1:] + ["--train_steps", saved + 2], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {path} at step {saved} " in resumed.stdout
    assert [s for _, s, _ in losses(resumed.stdout)] == [(saved % 10) + 1, (saved % 10) + 2]


# ---------------------------------------------------------------- kill during a save; the schedule resumes

IN_CREATE = 0x100


class DirectoryWatch:
    """Names created in a folder, as the kernel reports them (inotify), without polling."""

    def __init__(self, folder):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, str(folder).encode(), IN_CREATE) < 0:
            pytest.skip(f"inotify is not available ({os.strerror(ctypes.get_errno())})")

    def created(self, timeout):
        if not select.select([self.fd], [], [], timeout)[0]:
            return []
        data, names = os.read(self.fd, 65536), []
        while data:
            _, _, _, length = struct.unpack("iIII", data[:16])
            names.append(data[16:16 + length].rstrip(b"\0").decode())
            data = data[16 + length:]
        return names

    def close(self):
        os.close(self.fd)


def stop(pid):
    """SIGSTOP ``pid`` and return once all its threads are stopped."""
    os.kill(pid, signal.SIGSTOP)
    while open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "T":
        time.sleep(0.001)


def test_kill_during_a_save_then_resume_cleans_up_and_continues_loss_and_lr(data_root, tmp_path):
    # A schedule that changes every step (warm-up, then cosine): a restarted schedule would show.
    args = ["--dataset_path", data_root / "train", *TINY, "--epoch_size", "3", "--optimizer", "adam",
            "--learning_rate", "0.003", "--lr_schedule", "cosine", "--warmup_steps", "3",
            "--save_checkpoint_steps", "1", "--keep_checkpoint_max", "3"]
    (tmp_path / "reference").mkdir()
    reference = run_py([TRAIN] + args, cwd=tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    reference_lr = {int(m[0]): float(m[3]) for m in PROGRESS_LINE.findall(reference.stdout)}
    assert sorted(reference_lr) == [10, 20, 30] and reference_lr[10] > reference_lr[20] > reference_lr[30] > 0

    folder = tmp_path / "checkpoint"
    folder.mkdir()
    watch = DirectoryWatch(folder)
    caught = None
    try:
        with killed_at_exit(start(args, tmp_path, tmp_path)) as proc:
            # Stop the run the moment a save creates its temporary file after step 12; kill it if
            # the file is still being written, else let it go on to the next save.
            deadline = time.time() + 240
            while caught is None and time.time() < deadline and proc.poll() is None:
                for name in watch.created(timeout=1):
                    match = re.fullmatch(r"\.warpctc-(\d+)_(\d+)\.tmp", name)
                    if not match or (int(match[1]) - 1) * 10 + int(match[2]) <= 12:
                        continue
                    stop(proc.pid)
                    if (folder / name).exists():
                        caught = name
                        os.kill(proc.pid, signal.SIGKILL)
                        break
                    os.kill(proc.pid, signal.SIGCONT)
    finally:
        watch.close()
    assert caught, "no save was caught in the middle"
    assert caught in os.listdir(folder)                 # the kill left a partial file
    resume_from = max(checkpoints(folder), key=lambda n: global_step(folder / n))
    step = global_step(folder / resume_from)
    assert 12 <= step < 30

    resumed = run_py([TRAIN] + args + ["--resume_checkpoint", folder], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"removed the unfinished save(s) of an interrupted run from {folder}: {caught}" in resumed.stdout
    assert f"at step {step} " in resumed.stdout
    assert not [n for n in os.listdir(folder) if n.endswith(".tmp") or n.startswith(".warpctc")]
    # Losses and the optimizer's learning rate continue the uninterrupted run's.
    np.testing.assert_allclose([v for *_, v in losses(resumed.stdout)],
                               [v for *_, v in losses(reference.stdout)[step:]], rtol=1e-4)
    resumed_lr = {int(m[0]): float(m[3]) for m in PROGRESS_LINE.findall(resumed.stdout)}
    assert {20, 30} <= set(resumed_lr)
    for at in resumed_lr:
        assert resumed_lr[at] == pytest.approx(reference_lr[at], rel=1e-6)


# ---------------------------------------------------------------- 7. a platform this MindSpore cannot use

@pytest.mark.parametrize("platform", ["GPU", "Ascend"])
def test_platform_without_a_loadable_backend_is_one_line_naming_what_is_missing(data_root, tmp_path, platform):
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--platform", platform], cwd=tmp_path)
    if proc.returncode == 0:
        pytest.skip(f"this machine's MindSpore runs on {platform}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip() and "[WARNING]" not in l]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"train.py: error: --platform {platform}: MindSpore {ms.__version__} ")
    # either the build has no such backend, or the plugin's missing libraries are named
    assert re.search(rf"has no {platform} backend|cannot load its {platform} backend \S+: \S+\.so[.0-9]*(, \S+)* "
                     "not found", lines[0]), lines[0]
    assert not (tmp_path / "checkpoint").exists()
