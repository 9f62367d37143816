"""The entry points' output under a hostile command line: file names that would break predict.py's
TSV, and a stdout whose reader has gone (``| head -1``), that is full (``> /dev/full``) or closed
(``>&-``), handled once in src/cli.py's write_stdout."""
import os
import shutil
import signal
import subprocess
import sys

import pytest

import predict
from src.captcha_spec import CaptchaSpec
from src.data.labels import read_labels_tsv
from conftest import REPO, last_error_line, run_py, snapshot

PREDICT, EVAL = (os.path.join(REPO, name) for name in ("predict.py", "eval.py"))
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")
FULL = "cannot write the results to standard output (/dev/full): No space left on device"

# Names that would split predict.py's output over several fields or lines: tab, LF, CR, and a line
# break str.splitlines (read_labels_tsv) splits on.
BREAKING_NAMES = ["a\tb.png", "c\nd.png", "e\rf.png", "g\u2028h.png"]


def copy_captcha(data_root, target):
    shutil.copy(data_root / "test" / sorted(os.listdir(data_root / "test"))[0], target)
    return target


def test_predict_refuses_a_name_that_would_break_its_tsv_before_the_model_loads(data_root, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ["1.png"] + BREAKING_NAMES:
        copy_captcha(data_root, folder / name)
    undecodable = os.fsdecode(b"i\xffj.png")          # not UTF-8: no labels.tsv could hold it
    copy_captcha(data_root, os.path.join(folder, undecodable))
    before = snapshot(folder)
    for name in BREAKING_NAMES:
        with pytest.raises(ValueError) as err:
            predict.collect_images([str(folder / name)])
        assert str(err.value) == (f"{str(folder / name)!r}: a tab or line break in the name cannot be written to "
                                  "a labels.tsv line; rename it")
    with pytest.raises(ValueError, match="the name is not UTF-8") as err:
        predict.collect_images([os.path.join(folder, undecodable)])
    assert str(err.value).startswith(repr(os.path.join(str(folder), undecodable)))
    # The whole folder, with a checkpoint that does not exist: the names are refused first, in one line.
    proc = run_py([PREDICT, "--checkpoint_path", tmp_path / "none.ckpt", folder])
    assert proc.returncode == 2 and proc.stdout == ""
    assert last_error_line(proc) == (f"predict.py: error: {str(folder / BREAKING_NAMES[0])!r}: a tab or line break "
                                     "in the name cannot be written to a labels.tsv line; rename it")
    assert "Traceback" not in proc.stderr
    assert snapshot(folder) == before


def test_predict_prints_a_path_starting_with_hash_as_dot_slash_so_labels_tsv_reads_it(data_root, tmp_path):
    # labels.tsv skips lines starting with '#' and keeps only a listed path's file name.
    copy_captcha(data_root, tmp_path / "#1.png")
    copy_captcha(data_root, tmp_path / "2.png")
    lines = [predict.tsv_line(predict.Prediction(path, text, 0.98765))
             for path, text in (("#1.png", "12"), (str(tmp_path / "2.png"), "345"))]
    assert lines == ["./#1.png\t12\t0.9877", f"{tmp_path / '2.png'}\t345\t0.9877"]
    (tmp_path / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert read_labels_tsv(str(tmp_path), CaptchaSpec()) == [(str(tmp_path / "#1.png"), "12"),
                                                              (str(tmp_path / "2.png"), "345")]


# The shared function alone, in a process that imports nothing heavy.
WRITER = """
import sys
from src.cli import report_error, write_stdout
try:
    write_stdout(f"line {i}" for i in range(100000))      # more than any pipe holds
except ValueError as err:
    sys.exit(report_error("writer.py", err))
"""


def closed_pipe():
    """The write end of a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    return write_end


def run_with_stdout(args, stdout, **kwargs):
    try:
        return subprocess.run([str(a) for a in args], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": REPO}, timeout=300, **kwargs)
    finally:
        if isinstance(stdout, int):
            os.close(stdout)


def test_a_reader_that_has_gone_ends_the_process_as_it_ends_grep(tmp_path):
    text = tmp_path / "lines.txt"
    text.write_text("x\n" * 100000)
    grep = run_with_stdout(["grep", "x", text], closed_pipe())
    proc = run_with_stdout([sys.executable, "-c", WRITER], closed_pipe())
    assert proc.returncode == grep.returncode == -signal.SIGPIPE
    assert proc.stderr == ""                    # no traceback, no "Exception ignored" at exit


def test_a_full_or_closed_stdout_is_one_line_and_status_2():
    with open("/dev/full", "w") as full:
        proc = run_with_stdout([sys.executable, "-c", WRITER], full)
    assert (proc.returncode, proc.stderr) == (2, f"writer.py: error: {FULL}\n")
    proc = run_with_stdout(["bash", "-c", 'exec "$0" -c "$1" >&-', sys.executable, WRITER], None)
    assert (proc.returncode, proc.stderr) == (
        2, "writer.py: error: standard output is closed: there is nowhere to write the results\n")


def test_eval_piped_into_a_reader_that_has_gone_ends_quietly(data_root, tmp_path):
    proc = run_with_stdout([sys.executable, EVAL, "--dataset_path", data_root / "test", "--checkpoint_path",
                            RELEASED, "--quiet"], closed_pipe(), cwd=tmp_path)
    assert proc.returncode == -signal.SIGPIPE, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr


def test_predict_into_a_full_stdout_is_one_line(data_root, tmp_path):
    image = copy_captcha(data_root, tmp_path / "1.png")
    with open("/dev/full", "w") as full:
        proc = run_with_stdout([sys.executable, PREDICT, "--checkpoint_path", RELEASED, image, "--quiet"], full)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert last_error_line(proc) == f"predict.py: error: {FULL}"
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["1.png"]
