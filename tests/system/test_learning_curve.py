"""The learning-curve CSV across resumes (superseded rows, interpolated clock, damaged files, a row cut
short, a full disk) and its plot."""
import os
import subprocess
import sys

import pytest

from src.run.learning_curve import HEADER, read_learning_curve, train_seconds_at
from conftest import REPO, TINY, last_error_line, run_py


def write(path, *lines):
    path.write_text("\n".join((HEADER,) + lines) + "\n", encoding="utf-8")
    return str(path)


def test_resume_between_rows_supersedes_the_replayed_rows_and_interpolates_the_clock(tmp_path):
    # Checkpoint at step 194, curve rows every 100: the run that stopped after row 200 resumes
    # from 194, its clock at 94/100 of the way from row 100 (300 s) to row 200 (650 s) ...
    before = write(tmp_path / "c.csv",
                   "100,1,300.0,0.01,24.9,0.0000,1.0000",
                   "200,1,650.0,0.01,4.31,0.0285,0.9296")
    assert train_seconds_at(read_learning_curve(before), 194) == pytest.approx(300.0 + 0.94 * 350.0)
    # ... and replays steps 195-200, so the old row 200 no longer describes the model: readers drop it.
    after = write(tmp_path / "d.csv",
                  "100,1,300.0,0.01,24.9,0.0000,1.0000",
                  "200,1,650.0,0.01,4.31,0.0285,0.9296",
                  "# resumed at step 194",
                  "200,1,631.0,0.01,4.20,0.0300,0.9200",
                  "300,1,980.0,0.01,2.00,0.5000,0.2000")
    rows = read_learning_curve(after)
    assert [r["step"] for r in rows] == [100, 200, 300]
    assert rows[1]["train_seconds"] == 631.0 and rows[1]["eval_accuracy"] == pytest.approx(0.03)


def test_clock_before_the_first_row_and_after_the_last():
    rows = [{"step": 100, "train_seconds": 200.0}, {"step": 200, "train_seconds": 400.0}]
    assert train_seconds_at(rows, 50) == pytest.approx(100.0)
    assert train_seconds_at(rows, 200) == pytest.approx(400.0)
    assert train_seconds_at(rows, 250) == pytest.approx(500.0)      # at the run's mean rate
    assert train_seconds_at([], 97) == 0.0


@pytest.mark.parametrize("line, message", [
    ("100,1,300.0,0.01", "expected 7 columns, got 4"),
    ("100,1,abc,0.01,24.9,0.0,1.0", "not a number in '100,1,abc,0.01,24.9,0.0,1.0'"),
])
def test_damaged_rows_are_named_by_file_and_line(tmp_path, line, message):
    path = write(tmp_path / "c.csv", "50,1,10.0,0.01,9.0,0.0,1.0", line)
    with pytest.raises(ValueError) as err:
        read_learning_curve(path)
    assert str(err.value) == f"{path}:3: {message}"


def test_train_refuses_a_curve_file_that_is_not_a_learning_curve(data_root, tmp_path):
    bad = tmp_path / "notes.csv"
    bad.write_text("name,value\nx,1\n", encoding="utf-8")
    proc = run_py([os.path.join(REPO, "train.py"), "--dataset_path", data_root / "train", *TINY,
                   "--eval_dataset_path", data_root / "test", "--curve_csv", bad], cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) == (f"train.py: error: {bad}: not a learning-curve CSV "
                                     "(header 'name,value')")
    assert bad.read_text(encoding="utf-8") == "name,value\nx,1\n"     # left as it was
    assert not (tmp_path / "checkpoint").exists() or not os.listdir(tmp_path / "checkpoint")


def test_a_header_missing_columns_is_refused(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("step,epoch,train_seconds\n100,1,300.0\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_learning_curve(str(path))
    assert str(err.value) == f"{path}: not a learning-curve CSV (header 'step,epoch,train_seconds')"


def resumed_curve(path, start_step):
    """train.py's LearningCurve callback for a run resuming at ``start_step`` (no evaluation here)."""
    from src.run.callbacks import LearningCurve

    return LearningCurve(None, [], 5, str(path), [0.01] * 30, None, start_step)


def test_a_last_row_cut_short_is_dropped_when_a_run_appends_with_a_notice(tmp_path, capsys):
    path = tmp_path / "c.csv"
    complete = "\n".join((HEADER, "5,1,2.0,0.01,9.0,0.0000,1.0000", "10,1,4.0,0.01,5.0,0.1000,0.8000")) + "\n"
    path.write_text(complete + "15,2,6.0,0.0", encoding="utf-8")       # the disk filled up in row 15
    curve = resumed_curve(path, 13)
    assert curve.offset == pytest.approx(5.2)                           # from the complete rows
    assert path.read_text(encoding="utf-8") == complete + "15,2,6.0,0.0"   # reading changed nothing
    curve.check_writable()                                              # train.py: once the run may write
    assert capsys.readouterr().out == (f"learning curve {path}: dropped its last line '15,2,6.0,0.0', cut short "
                                       "when a run stopped in the middle of writing it\n")
    curve.on_train_begin(None)
    assert path.read_text(encoding="utf-8") == complete + "# resumed at step 13\n"


def test_a_damaged_row_that_is_not_the_last_cut_short_is_still_an_error(tmp_path):
    path = tmp_path / "c.csv"
    text = "\n".join((HEADER, "5,1,2.0,0.01,9.0,0.0,1.0", "10,1,4.0", "15,2,6.0,0.01,4.0,0.2,0.7")) + "\n"
    path.write_text(text + "20,2,8.0", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        resumed_curve(path, 13)
    assert str(err.value) == f"{path}:3: expected 7 columns, got 3"
    assert path.read_text(encoding="utf-8") == text + "20,2,8.0"


def test_a_full_disk_leaves_no_partial_row(tmpfs):
    path = tmpfs / "c.csv"
    # A file ending 10 bytes short of a page: the 20-byte marker needs a page the full disk has not.
    text = HEADER + "\n# " + "x" * (4096 - 10 - len(HEADER) - 4) + "\n"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(OSError), open(tmpfs / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 4096)
            filler.flush()
    curve = resumed_curve(path, 7)
    with pytest.raises(ValueError) as err:
        curve.on_train_begin(None)
    assert str(err.value) == f"learning curve {path}: cannot be written (No space left on device)"
    assert path.read_text(encoding="utf-8") == text


PLOT = os.path.join(REPO, "scripts", "plot_learning_curve.py")


def test_plot_draws_the_error_rate_on_a_log_axis_with_reference_lines(tmp_path):
    # matplotlib is a requirement (requirements.txt): missing, this test fails rather than skips.
    import importlib.util

    spec = importlib.util.spec_from_file_location("plot_learning_curve", PLOT)
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    path = write(tmp_path / "c.csv",
                 "100,1,60.0,0.01,20.0,0.0000,1.0000",
                 "200,1,120.0,0.01,1.00,0.9500,0.0200",
                 "300,1,180.0,0.01,0.10,0.9920,0.0030",
                 "400,1,240.0,0.01,0.05,1.0000,0.0000")
    fig = plot.draw([("run", plot.read_curve(path))])
    loss_ax, err_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and err_ax.get_yscale() == "log"
    curve, *references = err_ax.get_lines()
    # 100 % error at first, then 5 % and 0.8 %; no error at all sits on the floor the label names.
    assert list(curve.get_ydata()) == pytest.approx([100.0, 5.0, 0.8, plot.ZERO_ERROR_FLOOR])
    assert sorted(line.get_ydata()[0] for line in references) == [1.0, 2.0, 5.0]
    assert "(no error drawn at 0.01 %)" in err_ax.get_ylabel()
    assert err_ax.get_ylim()[0] <= plot.ZERO_ERROR_FLOOR
    proc = run_py([PLOT, tmp_path / "curve.png", f"run={path}"])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = run_py([PLOT, tmp_path / "nope" / "curve.png", f"run={path}"])
    assert proc.returncode == 2
    assert proc.stderr == f"plot_learning_curve.py: error: {tmp_path / 'nope' / 'curve.png'}: No such file or directory\n"


def test_plot_without_matplotlib_is_one_line(tmp_path):
    # A package that fails to import stands in for a missing matplotlib.
    (tmp_path / "matplotlib").mkdir()
    (tmp_path / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    path = write(tmp_path / "c.csv", "100,1,60.0,0.01,20.0,0.5,0.3")
    proc = subprocess.run([sys.executable, PLOT, str(tmp_path / "curve.png"), f"run={path}"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(tmp_path)}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "plot_learning_curve.py: error: matplotlib is not installed (pip install matplotlib)\n"
    assert not (tmp_path / "curve.png").exists()


def test_a_run_shorter_than_the_eval_interval_says_it_evaluates_at_the_end_only(data_root, tmp_path):
    # A newcomer's short run announced "every 200 steps" and evaluated once, at the end: it says so.
    proc = run_py([os.path.join(REPO, "train.py"), "--dataset_path", data_root / "train", *TINY,
                   "--eval_dataset_path", data_root / "test", "--eval_images", "16", "--eval_every", "200",
                   "--train_steps", "12"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("learning curve: "))
    assert "at the end only (step " in line and "shorter than --eval_every 200" in line, line
    rows = read_learning_curve(os.path.join(tmp_path, line.rsplit(" -> ", 1)[1]))
    assert [row["step"] for row in rows] == [12]
