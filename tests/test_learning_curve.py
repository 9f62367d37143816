"""The learning-curve CSV across resumes: superseded rows, interpolated clock, damaged files."""
import os

import pytest

from src.learning_curve import HEADER, read_learning_curve, train_seconds_at
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

