"""Labelling a folder by hand (src/serve/labelling.py) and training/evaluating on a partly labelled folder.

The folders hold real captcha PNGs (copied from the session's rendered ``data_root``); their true
labels are in their names, so a saved label can be checked against the truth.
"""
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from predict import Prediction, tsv_line
from src.captcha_spec import CaptchaSpec
from src.data.labels import LABELLING_HEADER, list_samples, parse_label, read_labels_file, read_labels_tsv
from src.serve.labelling import LabelStore
from conftest import REPO, TINY, last_error_line, run_py, snapshot

DIGITS = CaptchaSpec()
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")


def make_folder(data_root, folder, count):
    """``count`` real captchas of the training split copied into ``folder``; returns their sorted names."""
    folder.mkdir()
    names = sorted(n for n in os.listdir(data_root / "train") if n.endswith(".png"))[:count]
    for name in names:
        shutil.copy(data_root / "train" / name, folder / name)
    return names


def truth(name):
    return parse_label(name, DIGITS)


def label_file(folder):
    return (folder / "labels.tsv").read_bytes()


@pytest.fixture
def folder(data_root, tmp_path):
    path = tmp_path / "mine"
    return path, make_folder(data_root, path, 8)


def test_least_confident_first_skips_done_and_a_reopened_store_continues(folder):
    path, names = folder
    store = LabelStore(str(path), DIGITS)
    assert store.counts() == {"labelled": 0, "unreadable": 0, "total": 8}
    # names[5] and names[2] tie at 0.1 (by name); names[0], names[1], names[4] have no reading.
    readings = {names[3]: ("12", 0.9), names[5]: ("7", 0.1), names[2]: ("33", 0.1), names[6]: ("1", 0.5),
                names[7]: ("0", 0.05)}
    store.set_readings(readings)
    order = [names[7], names[2], names[5], names[6], names[3], names[0], names[1], names[4]]
    first = store.next()
    assert first == {"file": names[7], "reading": "0", "confidence": 0.05, "labelled": 0, "unreadable": 0, "total": 8}
    assert store.next() == first                        # nothing saved: still the same one
    assert store.save(names[7], truth(names[7])) == {"saved": True, "labelled": 1, "unreadable": 0, "total": 8}
    assert store.save(names[2], unreadable=True) == {"saved": True, "labelled": 1, "unreadable": 1, "total": 8}
    store.save(names[0], truth(names[0]))               # out of order: next() skips it later
    assert store.next()["file"] == names[5]
    assert store.item(names[2]) == {"file": names[2], "label": None, "unreadable": True, "reading": "33",
                                    "confidence": 0.1}
    assert store.item(names[0])["label"] == truth(names[0]) and store.item(names[4])["label"] is None
    assert store.pending() == [n for n in names if n not in (names[7], names[2], names[0])]

    reopened = LabelStore(str(path), DIGITS)
    reopened.set_readings(readings)
    assert reopened.counts() == {"labelled": 2, "unreadable": 1, "total": 8}
    assert reopened.item(names[2])["unreadable"] and reopened.item(names[7])["label"] == truth(names[7])
    seen = []
    while (item := reopened.next()) is not None:
        seen.append(item["file"])
        reopened.save(item["file"], truth(item["file"]))
    assert seen == [n for n in order if n not in (names[7], names[2], names[0])]
    assert reopened.counts() == {"labelled": 7, "unreadable": 1, "total": 8}
    # What train.py reads: the seven labels, not the unreadable one.
    assert read_labels_tsv(str(path), DIGITS) == [(str(path / n), truth(n)) for n in [names[7], names[0]] + seen]
    assert store.image_bytes(names[1]) == (path / names[1]).read_bytes()


@pytest.mark.parametrize("name, label, unreadable, message", [
    (1, "12a", False, "label '12a' holds 'a', which is not in the alphabet '0123456789'"),
    (1, "12345", False, "label '12345' has 5 characters, expected 1 to 4"),
    (1, "", False, "label '' has 0 characters"),
    (1, None, False, "give either a label or unreadable=True$"),
    (1, "12", True, "give either a label or unreadable=True, not both"),
    ("ghost.png", "12", False, "'ghost.png': not an image of "),
    ("../etc/passwd", "12", False, "'../etc/passwd': not an image of .* \\(give a file name of the folder, not a path"),
    ("/etc/passwd", None, True, "'/etc/passwd': not an image of "),
    ("labels.tsv", "12", False, "'labels.tsv': not an image of "),
])
def test_save_refuses_bad_input_with_the_reason_and_changes_nothing(folder, name, label, unreadable, message):
    path, names = folder
    unknown = not isinstance(name, int)
    name = name if unknown else names[name]
    store = LabelStore(str(path), DIGITS)
    store.save(names[0], truth(names[0]))
    before = snapshot(path)
    with pytest.raises(ValueError, match=message) as info:
        store.save(name, label, unreadable=unreadable)
    assert "\n" not in str(info.value)
    assert snapshot(path) == before
    assert store.counts() == {"labelled": 1, "unreadable": 0, "total": 8}
    if unknown:
        for call in (store.item, store.image_bytes):
            with pytest.raises(ValueError, match="not an image of"):
                call(name)


def test_existing_plain_and_predict_lines_are_kept_byte_for_byte_but_the_edited_one(folder):
    path, names = folder
    # A hand-written file with a BOM and CRLF line ends, then predict.py's own lines (full paths, confidences).
    plain = [f"{names[0]}\t{truth(names[0])}\r\n", "# checked by hand\r\n", f"{names[1]}\t{truth(names[1])}\r\n"]
    predicted = [tsv_line(Prediction(str(path / n), truth(n)[:-1] or "9", 0.4321)) + "\r\n" for n in names[2:4]]
    original = "\ufeff" + "".join(plain + predicted)
    (path / "labels.tsv").write_bytes(original.encode("utf-8"))
    store = LabelStore(str(path), DIGITS)
    assert store.counts()["labelled"] == 4              # predict.py's reads count as labels
    assert store.item(names[2])["label"] == (truth(names[2])[:-1] or "9")
    assert store.next()["file"] == names[4]

    store.save(names[2], truth(names[2]))               # an edit of a predict.py line
    store.save(names[5], unreadable=True)               # a new line
    expected = ["\ufeff" + LABELLING_HEADER + "\r\n", *plain, f"{names[2]}\t{truth(names[2])}\r\n", predicted[1],
                f"#unreadable\t{names[5]}\r\n"]
    assert label_file(path) == "".join(expected).encode("utf-8")
    store.save(names[5], truth(names[5]))               # marked unreadable, then labelled after all: same line
    assert label_file(path) == "".join(expected[:-1] + [f"{names[5]}\t{truth(names[5])}\r\n"]).encode("utf-8")
    assert list_samples(str(path), DIGITS)[-1] == (str(path / names[5]), truth(names[5]))


def test_a_file_without_a_final_line_break_and_another_writer_keep_their_lines(folder):
    path, names = folder
    (path / "labels.tsv").write_text(f"{LABELLING_HEADER}\n{names[0]}\t{truth(names[0])}", encoding="utf-8")
    first, second = LabelStore(str(path), DIGITS), LabelStore(str(path), DIGITS)
    first.save(names[1], truth(names[1]))
    second.save(names[2], truth(names[2]))              # on top of first's save, not over it
    with open(path / "labels.tsv", "a", encoding="utf-8") as handle:
        handle.write(f"{names[3]}\t{truth(names[3])}\n")  # a hand edit while the stores are open
    first.save(names[4], truth(names[4]))
    assert label_file(path).decode("utf-8") == (f"{LABELLING_HEADER}\n" + "".join(
        f"{names[i]}\t{truth(names[i])}\n" for i in (0, 1, 2, 3, 4)))
    assert second.counts() == {"labelled": 5, "unreadable": 0, "total": 8}


def test_a_labels_file_that_is_a_symbolic_link_stays_one(folder, tmp_path):
    path, names = folder
    kept = tmp_path / "kept.tsv"
    kept.write_text(f"{names[0]}\t{truth(names[0])}\n", encoding="utf-8")
    os.symlink(kept, path / "labels.tsv")
    LabelStore(str(path), DIGITS).save(names[1], truth(names[1]))
    assert os.readlink(path / "labels.tsv") == str(kept)
    assert kept.read_text(encoding="utf-8") == (f"{LABELLING_HEADER}\n{names[0]}\t{truth(names[0])}\n"
                                                f"{names[1]}\t{truth(names[1])}\n")


def test_threads_saving_at_once_lose_nothing(folder):
    path, names = folder
    store = LabelStore(str(path), DIGITS)
    threads = [threading.Thread(target=lambda part: [store.save(n, truth(n)) for n in part], args=(names[i::4],))
               for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(read_labels_tsv(str(path), DIGITS)) == [(str(path / n), truth(n)) for n in names]


def test_a_damaged_labels_file_or_odd_folder_is_refused_in_one_line(folder, tmp_path):
    path, names = folder
    (path / "labels.tsv").write_text(f"{names[0]}\t12\n#unreadable\t{names[0]}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{re.escape(str(path / 'labels.tsv'))}:2: {names[0]} is marked "
                                         "unreadable here and labelled on line 1; keep one of the two lines$"):
        LabelStore(str(path), DIGITS)
    (path / "labels.tsv").write_text(f"{names[0]}\t12\textra\tmore\n", encoding="utf-8")
    with pytest.raises(ValueError, match="labels.tsv:1: expected file<TAB>label, got 4 field"):
        LabelStore(str(path), DIGITS)
    os.remove(path / "labels.tsv")
    (path / "labels.tsv").mkdir()
    with pytest.raises(ValueError, match="labels.tsv: a folder, not a file of labels"):
        LabelStore(str(path), DIGITS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="dataset folder .*empty: holds no .png"):
        LabelStore(str(tmp_path / "empty"), DIGITS)
    with pytest.raises(ValueError, match="dataset folder .*: is not a folder"):
        LabelStore(str(path / names[0]), DIGITS)
    shutil.copy(path / names[0], tmp_path / "empty" / "a\nb.png")
    with pytest.raises(ValueError, match="a tab or line break in the name cannot be written to a labels.tsv line"):
        LabelStore(str(tmp_path / "empty"), DIGITS)


@pytest.mark.parametrize("lines, message", [
    (["{h}", "#unreadable\tghost.png"], "labels.tsv:2: ghost.png does not exist in"),
    (["{h}", "#unreadable\t{0}", "#unreadable\t{0}"], "labels.tsv:3: {0} is listed twice \\(first on line 2\\)"),
    (["{h}", "#unreadable\t{0}", "{0}\t12"], "labels.tsv:3: {0} is labelled here and marked unreadable on line 2"),
    (["{h}", "#unreadable\t{0}\t12"], "labels.tsv:2: expected #unreadable<TAB>file, got 3 field"),
    (["{h}", "#unreadable\t{0}"], "labels.tsv: lists no labelled images \\(7 not labelled yet and 1 marked "
                                  "unreadable\\); label some first$"),
    (["{0}\t12", "{1}\t3"], "labels.tsv: 6 image\\(s\\) of the folder are not listed \\(e.g. {2}\\); list every "
                            "image or move it out$"),
])
def test_labelling_lines_that_train_py_refuses(folder, lines, message):
    path, names = folder
    text = "\n".join(lines).replace("{h}", LABELLING_HEADER).format(*names) + "\n"
    (path / "labels.tsv").write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message.format(*names)):
        list_samples(str(path), DIGITS)


CHILD = textwrap.dedent("""
    import random, sys
    from src.captcha_spec import CaptchaSpec
    from src.serve.labelling import LabelStore

    store = LabelStore(sys.argv[1], CaptchaSpec())
    rng = random.Random(int(sys.argv[2]))
    names = sorted(store.item(n)["file"] for n in sys.argv[3:])
    while True:
        name = rng.choice(names)
        label = None if rng.random() < 0.2 else str(rng.randrange(10000))
        print("begin", name, label or "#unreadable", flush=True)
        store.save(name, label, unreadable=label is None)
        print("done", name, label or "#unreadable", flush=True)
""")


def test_a_kill_at_any_moment_leaves_a_whole_file_with_every_returned_save(folder, tmp_path):
    path, names = folder
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=REPO)
    rng = random.Random(5)
    expected, kills_after, deadline = {}, [], time.monotonic() + 40
    for round_ in range(6):
        log = tmp_path / f"round{round_}.log"
        with open(log, "w") as out:
            child = subprocess.Popen([sys.executable, str(script), str(path), str(round_), *names], stdout=out,
                                     stderr=subprocess.PIPE, env=env)
        while log.read_text().count("done") < 3 and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None, child.stderr.read().decode()[-2000:]
        time.sleep(rng.uniform(0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()
        text = log.read_text()
        # The kill can land inside a print: only the lines the child finished writing count.
        events = [line.split() for line in text[:text.rfind("\n") + 1].splitlines()]
        in_flight = None
        for kind, name, value in events:
            if kind == "done":
                expected[name], in_flight = value, None
            else:
                in_flight = (name, value)
        kills_after.append(len(events))
        read_labels_file(str(path), DIGITS)             # whole and valid: it parses
        store = LabelStore(str(path), DIGITS)
        for name in names:
            item = store.item(name)
            on_disk = "#unreadable" if item["unreadable"] else item["label"]
            allowed = {expected.get(name)} | ({in_flight[1]} if in_flight and in_flight[0] == name else set())
            assert on_disk in allowed, (round_, name, on_disk, allowed)
    assert min(kills_after) >= 6                        # every round saved a few times before its kill
    # What a kill leaves behind is at most a hidden temporary file, no image and no labels file.
    assert sorted(n for n in os.listdir(path) if not n.startswith(".labels.tsv.")) == sorted(names + ["labels.tsv"])


def test_train_and_eval_use_the_labelled_images_of_a_partly_labelled_folder(data_root, tmp_path):
    path = tmp_path / "mine"
    names = make_folder(data_root, path, 40)
    store = LabelStore(str(path), DIGITS)
    for name in names[:32]:
        store.save(name, truth(name))
    for name in names[32:34]:
        store.save(name, unreadable=True)
    said = "32 labelled images; leaving out 6 not labelled yet and 2 marked unreadable"
    trained = run_py([os.path.join(REPO, "train.py"), "--dataset_path", path, *TINY, "--epoch_size", "1"],
                     cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert trained.stderr.count(f"dataset: {path / 'labels.tsv'}: {said}") == 1
    assert os.listdir(tmp_path / "checkpoint")
    evaluated = run_py([os.path.join(REPO, "eval.py"), "--dataset_path", path, "--checkpoint_path", RELEASED,
                        "--quiet"], cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert evaluated.stderr.count(said) == 1 and "evaluated 32 images" in evaluated.stdout

    # Without the header the file is a plain labels.tsv again: every image must be listed.
    lines = label_file(path).decode("utf-8").splitlines(keepends=True)
    (path / "labels.tsv").write_text("".join(line for line in lines if not line.startswith("#")), encoding="utf-8")
    refused = run_py([os.path.join(REPO, "train.py"), "--dataset_path", path, *TINY, "--epoch_size", "1"],
                     cwd=tmp_path)
    assert refused.returncode == 2
    assert last_error_line(refused) == (f"train.py: error: {path / 'labels.tsv'}: 8 image(s) of the folder are not "
                                        f"listed (e.g. {names[32]}); list every image or move it out")
