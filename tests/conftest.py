"""Shared fixtures: small real captcha datasets rendered once per test session."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import process_data  # noqa: E402

# Tiny network/run settings shared by the training tests: fast on 2 cores, still a real run.
TINY = ["--hidden_size", "32", "--batch_size", "16"]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """``train`` (160 images) and ``test`` (64 images) folders of real captcha PNGs."""
    root = tmp_path_factory.mktemp("captcha")
    process_data.render_split(str(root / "train"), 160, seed=7, split="train", workers=2, progress=False)
    process_data.render_split(str(root / "test"), 64, seed=7, split="test", workers=2, progress=False)
    return root


TRAIN = os.path.join(REPO, "train.py")


@pytest.fixture(scope="session")
def trained(data_root, tmp_path_factory):
    """One uninterrupted tiny training: 3 epochs x 10 steps, checkpoint every 4 steps.

    Returns the working folder (checkpoints in ``checkpoint/``) and the run's stdout.
    """
    work = tmp_path_factory.mktemp("train")
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *TINY, "--epoch_size", "3",
                   "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "3", "--learning_rate", "0.02"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work, proc.stdout


def run_py(args, cwd=None, timeout=300, env=None):
    """Run a repository script with this interpreter; returns the CompletedProcess."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env["PYTHONPATH"] = REPO
    return subprocess.run([sys.executable] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def run_bash(args, cwd=None, timeout=300, env=None):
    """Run a launcher from scripts/ with bash; ``python3`` resolves to this interpreter."""
    full_env = dict(os.environ)
    full_env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + full_env.get("PATH", "")
    full_env["PYTHON"] = sys.executable
    full_env.update(env or {})
    return subprocess.run(["bash"] + [str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=full_env)


def last_error_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "[WARNING]" not in line]
    return lines[-1] if lines else ""


@contextlib.contextmanager
def mounted_tmpfs(path, size):
    """A tmpfs of ``size`` at ``path``: a small disk that fills up (needs root; the test is skipped
    with the reason where mounting is not allowed). Unmounted after."""
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"cannot mount a tmpfs to simulate the disk ({result.stderr.strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MB tmpfs (a disk that fills up; remount it read-only with ``remount_ro``), unmounted after."""
    with mounted_tmpfs(tmp_path / "tmpfs", "2m") as mount_point:
        yield mount_point


def remount_ro(path):
    """Make a :func:`mounted_tmpfs` read-only (as root, a chmod'ed folder would still be writable)."""
    subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)


def snapshot(folder):
    """Every file of a folder with its bytes."""
    return {name: (folder / name).read_bytes() for name in os.listdir(folder)}


def running(pid):
    """Whether ``pid`` exists and is not a zombie (an orphan's zombie may wait for a busy init)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def ctc_reference(log_probs, label, blank):
    """Negative log-likelihood of ``label`` under (T, C) log-probabilities: the plain CTC forward algorithm,
    one state at a time, written independently of the code under test."""
    ext = [blank]
    for c in label:
        ext += [c, blank]
    T, S = log_probs.shape[0], len(ext)
    alpha = np.full((T, S), -np.inf)
    alpha[0, 0] = log_probs[0, blank]
    if S > 1:
        alpha[0, 1] = log_probs[0, ext[1]]
    for t in range(1, T):
        for s in range(S):
            terms = [alpha[t - 1, s]]
            if s > 0:
                terms.append(alpha[t - 1, s - 1])
            if s > 1 and ext[s] != blank and ext[s] != ext[s - 2]:
                terms.append(alpha[t - 1, s - 2])
            alpha[t, s] = np.logaddexp.reduce(terms) + log_probs[t, ext[s]]
    return -np.logaddexp(alpha[-1, -1], alpha[-1, -2] if S > 1 else -np.inf)


def bilinear(image, height, width):
    """Half-pixel-centre bilinear resize of an HWC float image (OpenCV's and MindSpore's convention)."""
    def taps(size_out, size_in):
        centre = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(centre).astype(int)
        return low, np.minimum(low + 1, size_in - 1), (centre - low)

    r0, r1, fr = taps(height, image.shape[0])
    c0, c1, fc = taps(width, image.shape[1])
    rows = image[r0] * (1 - fr)[:, None, None] + image[r1] * fr[:, None, None]
    return rows[:, c0] * (1 - fc)[None, :, None] + rows[:, c1] * fc[None, :, None]


def pytest_collection_modifyitems(items):
    """tests/unit/ first (quick, in-process), then tests/system/ (processes, servers, the browser): a failing
    unit shows within seconds, and the in-process unit tests run before any system test has switched this
    process's MindSpore context or compiled graphs in it."""
    items.sort(key=lambda item: os.sep + "system" + os.sep in str(item.fspath))
