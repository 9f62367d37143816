"""eval.py, predict.py, export.py, run_eval.sh and the hub entry.

Reading and decoding are checked with the released model on a pinned subset it mostly reads
right (a model that outputs only blanks would let a preprocessing or decoding bug pass);
checkpoint handling and export use a checkpoint trained in the test.
"""
import math
import os
import shutil

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn
from PIL import Image

import mindspore_hub_conf
import process_data
from src.checkpoint.model import load_network
from src.config import Config
from src.metric import edit_distance
from conftest import REPO, bilinear, ctc_reference, last_error_line, run_bash, run_py

EVAL, PREDICT, EXPORT = (os.path.join(REPO, n) for n in ("eval.py", "predict.py", "export.py"))
RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")

# The pinned subset: 64 test captchas of seed 100. Measured once with the released model:
# 62 read right; 08-734.png is read as 754 and 41-412.png as 472.
SUBSET_SEED, SUBSET_SIZE, EXPECTED_CORRECT = 100, 64, 62

# The preprocessing, written out here rather than imported from the code under test: pixels in
# BGR order, /255, then per channel (B, G, R) minus MEAN over STD, then a bilinear resize to
# height ceil(H / 16) * 16 and the configured width, channels first.
MEAN_BGR = np.array([0.9010, 0.9049, 0.9025])
STD_BGR = np.array([0.1521, 0.1347, 0.1458])
BLANK_CLASS = 10


def reference_inputs(paths, captcha_height=64, captcha_width=160):
    """The network input for ``paths``, computed without src.dataset."""
    height = math.ceil(captcha_height / 16) * 16
    images = []
    for path in paths:
        with Image.open(path) as handle:
            rgb = np.asarray(handle.convert("RGB"), dtype=np.float64)
        normalised = (rgb[:, :, ::-1] / 255.0 - MEAN_BGR) / STD_BGR
        if normalised.shape[:2] != (height, captcha_width):
            normalised = bilinear(normalised, height, captcha_width)
        images.append(normalised.transpose(2, 0, 1))
    return ms.Tensor(np.stack(images).astype(np.float32))


def independent_decode(logits):
    """Greedy CTC decoding, step by step, plus the probability of the decoded text."""
    out = []
    for b in range(logits.shape[1]):
        steps = np.asarray(logits[:, b], dtype=np.float64)
        digits, prev = [], None
        for step in steps:
            c = int(step.argmax())
            if c != prev and c != BLANK_CLASS:
                digits.append(c)
            prev = c
        log_probs = steps - steps.max(axis=1, keepdims=True)
        log_probs -= np.log(np.exp(log_probs).sum(axis=1, keepdims=True))
        out.append(("".join(str(c) for c in digits), float(np.exp(-ctc_reference(log_probs, digits, BLANK_CLASS)))))
    return out


def label_of(path):
    return os.path.basename(path).split("-", 1)[1][:-len(".png")]


def parse_result(stdout):
    line = next(l for l in stdout.splitlines() if l.startswith("result: "))
    return eval(line[len("result: "):], {})   # the original's printed dict


def progress_lines(stderr, script):
    return [line for line in stderr.splitlines() if line.startswith(f"{script}: ")]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pinned") / "test"
    process_data.render_split(str(folder), SUBSET_SIZE, seed=SUBSET_SEED, split="test", workers=2, progress=False)
    return folder


@pytest.fixture(scope="module")
def released(subset):
    """Paths, labels and the independent reading ``[(text, confidence)]`` of the pinned subset."""
    ms.set_context(mode=ms.GRAPH_MODE)
    paths = sorted(str(subset / name) for name in os.listdir(subset) if name.endswith(".png"))
    logits = load_network(RELEASED, Config())[0](reference_inputs(paths)).asnumpy()
    return paths, [label_of(p) for p in paths], independent_decode(logits)


def test_released_model_reads_the_pinned_subset(released):
    _, labels, reads = released
    assert sum(text == label for (text, _), label in zip(reads, labels)) == EXPECTED_CORRECT


def test_eval_matches_an_independent_decode(subset, released, tmp_path):
    _, labels, reads = released
    proc = run_py([EVAL, "--dataset_path", subset, "--checkpoint_path", RELEASED, "--batch_size", "24"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = parse_result(proc.stdout)
    assert set(result) == {"WarpCTCAccuracy", "CER"}
    assert result["WarpCTCAccuracy"] == EXPECTED_CORRECT / SUBSET_SIZE
    edits = sum(edit_distance(text, label) for (text, _), label in zip(reads, labels))
    assert result["CER"] == pytest.approx(edits / sum(len(label) for label in labels))
    assert "evaluated 64 images" in proc.stdout          # 24+24+16: the last partial batch counts
    # stdout holds the results only; progress is on stderr and ends with the total
    assert [line.split(" ")[0] for line in proc.stdout.splitlines()] == ["dataset:", "result:", "accuracy",
                                                                          "evaluated"]
    # the split's manifest, so a test set from another rendering run is visible
    assert proc.stdout.splitlines()[0] == (f"dataset: {subset}: {SUBSET_SIZE} images, seed {SUBSET_SEED}, "
                                           "160x64, 1-4 chars of 0123456789, captcha 0.7.1")
    assert progress_lines(proc.stderr, "eval")[-1].startswith("eval: 64/64 images (")
    quiet = run_py([EVAL, "--dataset_path", subset, "--checkpoint_path", RELEASED, "--quiet"], cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert parse_result(quiet.stdout) == result and progress_lines(quiet.stderr, "eval") == []


def read_predict_output(stdout):
    """``[(file, text, confidence)]``; every line must have exactly three tab-separated fields."""
    rows = []
    for line in stdout.splitlines():
        path, text, confidence = line.split("\t")
        assert len(confidence) == 6 and 0.0 <= float(confidence) <= 1.0, line     # 4 decimals, in [0, 1]
        rows.append((path, text, float(confidence)))
    return rows


def test_predict_reads_each_image_like_the_independent_decode(released, tmp_path):
    paths, labels, reads = released
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i, path in enumerate(paths):
        shutil.copy(path, unlabeled / f"img{i:03d}.png")
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, unlabeled, "--batch_size", "20"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_predict_output(proc.stdout)
    assert [os.path.basename(p) for p, _, _ in rows] == [f"img{i:03d}.png" for i in range(len(paths))]
    assert [text for _, text, _ in rows] == [text for text, _ in reads]
    for (_, _, printed), (_, confidence) in zip(rows, reads):
        assert printed == pytest.approx(confidence, abs=1e-4)
    assert progress_lines(proc.stderr, "predict")[-1].startswith("predict: 64/64 images (")
    right = [conf for (_, text, conf), label in zip(rows, labels) if text == label]
    wrong = [conf for (_, text, conf), label in zip(rows, labels) if text != label]
    assert len(wrong) == SUBSET_SIZE - EXPECTED_CORRECT > 0
    assert np.mean(wrong) < np.mean(right)


def test_predict_reads_png_jpeg_gif_bmp_and_lists_only_images(released, tmp_path):
    paths, labels, reads = released
    first, other = 12, 48                     # two captchas the model reads right
    assert [reads[i][0] for i in (first, other)] == [labels[first], labels[other]]
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(paths[first], folder / "1.png")
    with Image.open(paths[first]) as handle:
        image = handle.convert("RGB")
    with Image.open(paths[other]) as handle:
        second_frame = handle.convert("RGB")
    image.save(folder / "2.bmp")
    image.save(folder / "3.JPG", quality=95)
    image.save(folder / "4.gif", save_all=True, append_images=[second_frame], duration=200)
    (folder / "notes.txt").write_text("not an image")
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, folder, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_predict_output(proc.stdout)
    assert [os.path.basename(path) for path, _, _ in rows] == ["1.png", "2.bmp", "3.JPG", "4.gif"]
    assert rows[1][1:] == rows[0][1:]         # BMP is lossless: the PNG's text and confidence
    assert [text for _, text, _ in rows] == [labels[first]] * 4    # the GIF is read from its first frame
    assert progress_lines(proc.stderr, "predict") == []


def test_predict_bad_images_are_one_line_errors(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    broken = tmp_path / "broken.jpg"
    Image.fromarray(np.full((64, 160, 3), 200, dtype=np.uint8)).save(broken, quality=90)
    broken.write_bytes(broken.read_bytes()[:300])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    for inputs, expected in (([notes], f"{notes}: not a readable image (UnidentifiedImageError"),
                             ([broken], f"{broken}: not a readable JPEG image ("),
                             ([tmp_path / "empty"], f"dataset folder {tmp_path / 'empty'}: holds no "
                                                    ".png/.jpg/.jpeg/.gif/.bmp files")):
        proc = run_py([PREDICT, "--checkpoint_path", RELEASED, *inputs])
        assert proc.returncode == 2 and last_error_line(proc).startswith(f"predict.py: error: {expected}"), proc.stderr
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_predict_resizes_other_heights_to_a_multiple_of_16(released, tmp_path):
    paths, labels, _ = released
    folder = tmp_path / "h50"
    folder.mkdir()
    for path in paths[:16]:
        with Image.open(path) as handle:
            handle.convert("RGB").resize((160, 50), Image.BICUBIC).save(folder / os.path.basename(path))
    low = sorted(str(folder / name) for name in os.listdir(folder))
    ms.set_context(mode=ms.GRAPH_MODE)
    reads = independent_decode(load_network(RELEASED, Config())[0](reference_inputs(low, captcha_height=50)).asnumpy())
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, folder, "--captcha_height", "50", "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_predict_output(proc.stdout)
    assert [text for _, text, _ in rows] == [text for text, _ in reads]
    for (_, _, printed), (_, confidence) in zip(rows, reads):
        assert printed == pytest.approx(confidence, abs=1e-4)
    # still a reading model on the resized images (measured once), so the comparison is not of blanks
    assert sum(text == label for (text, _), label in zip(reads, labels[:16])) == 15


def test_onnx_export_decoded_with_only_its_json_gives_predicts_strings(released, subset, tmp_path):
    """A user without MindSpore: onnxruntime, PIL and numpy, and nothing but the JSON written beside the model."""
    import json

    ort = pytest.importorskip("onnxruntime")
    paths, _, _ = released
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", tmp_path / "model", "--file_format", "ONNX",
                   "--export_batch_size", "16"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "model.onnx.json").read_text(encoding="utf-8"))
    assert info["model_file"] == "model.onnx" and info["charset"] == "0123456789" and info["blank_index"] == 10
    batch, channels, height, width = info["input"]["shape"]
    order = {"BGR": [2, 1, 0], "RGB": [0, 1, 2]}[info["input"]["channel_order"]]

    def prepare(path):
        with Image.open(path) as handle:
            rgb = np.asarray(handle.convert("RGB"), dtype=np.float64)[:, :, order]
        x = (rgb * info["input"]["rescale"] - np.array(info["input"]["mean"])) / np.array(info["input"]["std"])
        if x.shape[:2] != (height, width):
            x = bilinear(x, height, width)
        return x.transpose(2, 0, 1).astype(np.float32)

    session = ort.InferenceSession(str(tmp_path / "model.onnx"))
    texts = []
    for start in range(0, len(paths), batch):
        (out,) = session.run(None, {session.get_inputs()[0].name: np.stack([prepare(p) for p in paths[start:start + batch]])})
        for seq in out.argmax(-1).T:
            kept = [c for i, c in enumerate(seq) if c != info["blank_index"] and (i == 0 or c != seq[i - 1])]
            texts.append("".join(info["charset"][c] for c in kept))
    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, subset, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert texts == [text for _, text, _ in read_predict_output(proc.stdout)]


def test_confidence_bench_reads_through_predict(subset, tmp_path):
    proc = run_py([os.path.join(REPO, "bench", "bench_confidence.py"), "--dataset_path", subset, "--quiet"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"overall accuracy: 96.88% ({EXPECTED_CORRECT}/{SUBSET_SIZE})" in proc.stdout
    # both misreads are among the least confident: the most confident 90 % are all right
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines() if line.strip()[:3] in ("50%", "90%")}
    assert rows["50%"][:3] == ["50%", "32", "100.00%"] and rows["90%"][:3] == ["90%", "58", "100.00%"]


# Checkpoint handling and export need no reading model: a tiny checkpoint trained in the test.
@pytest.fixture(scope="module")
def ckpt(trained):
    return trained[0] / "checkpoint" / "warpctc-3_10.ckpt"


@pytest.fixture(scope="module")
def reference(data_root, ckpt):
    ms.set_context(mode=ms.GRAPH_MODE)
    paths = sorted(str(data_root / "test" / name) for name in os.listdir(data_root / "test") if name.endswith(".png"))
    net, _ = load_network(str(ckpt), Config())     # hidden size (32) read from the checkpoint
    return paths, net(reference_inputs(paths)).asnumpy()


def test_hub_network_loads_checkpoint_and_matches_eval_network(data_root, ckpt, reference):
    paths, logits = reference
    net = mindspore_hub_conf.create_network("warpctc", checkpoint_path=str(ckpt))
    out = net(reference_inputs(paths[:8])).asnumpy()
    np.testing.assert_allclose(out, logits[:, :8], rtol=1e-5, atol=1e-5)
    bare = mindspore_hub_conf.create_network("warpctc", hidden_size=32)
    assert bare.fc.weight.shape == (11, 32)
    with pytest.raises(NotImplementedError, match="resnet"):
        mindspore_hub_conf.create_network("resnet")


def test_exported_mindir_and_onnx_give_checkpoint_outputs(data_root, ckpt, reference, tmp_path):
    paths, logits = reference
    x = reference_inputs(paths[:2])
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "w", "--export_batch_size", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    graph = nn.GraphCell(ms.load(str(tmp_path / "w.mindir")))
    np.testing.assert_allclose(graph(x).asnumpy(), logits[:, :2], rtol=1e-4, atol=1e-4)
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "w", "--file_format", "ONNX",
                   "--export_batch_size", "2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(tmp_path / "w.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: x.asnumpy()})
    np.testing.assert_allclose(out, logits[:, :2], rtol=1e-4, atol=1e-4)


def test_weights_only_checkpoint_export(ckpt, reference, tmp_path):
    paths, logits = reference
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "release", "--file_format", "CKPT"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    released = tmp_path / "release.ckpt"
    assert released.stat().st_size < 0.6 * ckpt.stat().st_size          # no optimizer state
    assert "accum.fc.weight" not in ms.load_checkpoint(str(released))
    net = mindspore_hub_conf.create_network("warpctc", checkpoint_path=str(released))
    out = net(reference_inputs(paths[:4])).asnumpy()
    np.testing.assert_allclose(out, logits[:, :4], rtol=1e-5, atol=1e-5)
    proc = run_py([EXPORT, "--checkpoint_path", released, "--file_name", tmp_path / "release", "--file_format", "CKPT"])
    assert proc.returncode == 2 and "would overwrite the checkpoint being exported" in last_error_line(proc)


@pytest.mark.parametrize("script", ["eval", "predict", "export"])
@pytest.mark.parametrize("case", ["missing", "corrupt", "other_shape"])
def test_bad_checkpoint_is_a_one_line_error(data_root, ckpt, tmp_path, script, case):
    if case == "missing":
        path, expected, extra = tmp_path / "none.ckpt", "does not exist", []
    elif case == "corrupt":
        path = tmp_path / "broken.ckpt"
        path.write_bytes(ckpt.read_bytes()[:5000])
        expected, extra = "corrupt or not a MindSpore checkpoint", []
    else:
        path, expected, extra = ckpt, "--hidden_size 48 conflicts with the checkpoint's 32", ["--hidden_size", "48"]
    args = {"eval": [EVAL, "--dataset_path", data_root / "test"], "predict": [PREDICT, data_root / "test"],
            "export": [EXPORT, "--file_name", tmp_path / "w"]}[script]
    proc = run_py(args + ["--checkpoint_path", path] + extra, cwd=tmp_path)
    assert proc.returncode == 2
    assert last_error_line(proc) .startswith(f"{script}.py: error: checkpoint {path}: {expected}")
    assert "Traceback" not in proc.stderr


def test_predict_missing_input_and_bad_export_options(ckpt, tmp_path):
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, tmp_path / "nope.png"])
    assert proc.returncode == 2 and last_error_line(proc) == f"predict.py: error: {tmp_path / 'nope.png'}: no such file or folder"
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--export_batch_size", "0"])
    assert proc.returncode == 2 and "--export_batch_size must be positive" in last_error_line(proc)


def test_run_eval_script_checks_arguments_and_passes_status(data_root, ckpt, tmp_path):
    env = {"WARPCTC_RUN_DIR": str(tmp_path / "run")}
    proc = run_bash([os.path.join(REPO, "scripts", "run_eval.sh"), data_root / "test"], env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("Usage: bash run_eval.sh [DATASET_PATH]")
    proc = run_bash([os.path.join(REPO, "scripts", "run_eval.sh"), tmp_path / "nope", ckpt, "CPU"], env=env)
    assert proc.returncode == 2 and proc.stderr.strip() == f"run_eval.sh: error: {tmp_path / 'nope'}: no such folder"
    proc = run_bash([os.path.join(REPO, "scripts", "run_eval.sh"), data_root / "test", ckpt, "TPU"], env=env)
    assert proc.returncode == 2 and "unknown platform 'TPU'" in proc.stderr
    # relative paths resolve against the caller's folder
    proc = run_bash([os.path.join(REPO, "scripts", "run_eval.sh"), "test", os.path.relpath(ckpt, data_root), "CPU"],
                    cwd=data_root, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "result: {'WarpCTCAccuracy': " in proc.stdout
    assert "result: {'WarpCTCAccuracy': " in (tmp_path / "run" / "eval.log").read_text()
    # eval's own failure status comes through
    proc = run_bash([os.path.join(REPO, "scripts", "run_eval.sh"), data_root / "test", ckpt, "CPU",
                     "--hidden_size", "48"], env=env)
    assert proc.returncode == 2 and "conflicts with the checkpoint's 32" in proc.stdout


def test_onnx_json_states_every_decoding_step_predict_applies(subset, tmp_path):
    """16-bit, EXIF-rotated and transparent images read by a user who follows only the JSON."""
    import json

    from PIL import ImageOps

    ort = pytest.importorskip("onnxruntime")
    paths = sorted(os.path.join(subset, n) for n in os.listdir(subset) if n.endswith(".png"))[:6]
    odd = tmp_path / "odd"
    odd.mkdir()
    truth = {}
    for number, path in enumerate(paths):
        truth[f"{number}-{('16bit', 'exif', 'alpha')[number % 3]}.png"] = label_of(path)
        with Image.open(path) as handle:
            rgb = handle.convert("RGB")
        if number % 3 == 0:     # 16-bit grey: Pillow's plain RGB conversion clips it to white
            grey = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
            Image.fromarray(grey).save(odd / f"{number}-16bit.png")
        elif number % 3 == 1:   # stored on its side, upright by its EXIF orientation (6: rotate 90 clockwise)
            exif = Image.Exif()
            exif[0x0112] = 6
            rgb.transpose(Image.Transpose.ROTATE_90).save(odd / f"{number}-exif.png", exif=exif)
        else:                   # the background transparent, black under it
            pixels = np.asarray(rgb)
            alpha = np.where(pixels.min(axis=2) > 200, 0, 255).astype(np.uint8)
            rgba = np.dstack([np.where(alpha[..., None] == 0, 0, pixels), alpha]).astype(np.uint8)
            Image.fromarray(rgba, "RGBA").save(odd / f"{number}-alpha.png")
    files = sorted(str(odd / n) for n in os.listdir(odd))
    proc = run_py([EXPORT, "--checkpoint_path", RELEASED, "--file_name", tmp_path / "model", "--file_format", "ONNX",
                   "--export_batch_size", "1"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "model.onnx.json").read_text(encoding="utf-8"))
    steps = info["input"]["decode"]
    assert set(steps) == {"exif_orientation", "high_bit_depth", "transparency"}
    _, _, height, width = info["input"]["shape"]
    mean, std = np.array(info["input"]["mean"]), np.array(info["input"]["std"])
    session = ort.InferenceSession(str(tmp_path / "model.onnx"))

    def read(image):
        bgr = np.asarray(image, dtype=np.float64)[:, :, ::-1]
        x = bilinear((bgr * info["input"]["rescale"] - mean) / std, height, width).transpose(2, 0, 1)
        (out,) = session.run(None, {session.get_inputs()[0].name: x[None].astype(np.float32)})
        seq = out[:, 0].argmax(-1)
        return "".join(info["charset"][c] for i, c in enumerate(seq)
                       if c != info["blank_index"] and (i == 0 or c != seq[i - 1]))

    def as_the_json_says(path):
        with Image.open(path) as handle:
            image = ImageOps.exif_transpose(handle)                       # exif_orientation
            if image.mode.startswith("I"):                                # high_bit_depth
                grey = (np.asarray(image, dtype=np.uint32) + 128) // 257
                return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
            if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:   # transparency
                rgba = image.convert("RGBA")
                return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
            return image.convert("RGB")

    def naively(path):
        with Image.open(path) as handle:
            return handle.convert("RGB")

    proc = run_py([PREDICT, "--checkpoint_path", RELEASED, odd, "--quiet"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = [text for _, text, _ in read_predict_output(proc.stdout)]
    assert [read(as_the_json_says(path)) for path in files] == expected
    assert sum(text == truth[os.path.basename(path)] for text, path in zip(expected, files)) >= 5  # it reads
    # Each kind of image needs its step: without them, a reader gets other texts.
    for kind in ("16bit", "exif", "alpha"):
        assert any(read(naively(path)) != text for path, text in zip(files, expected) if kind in path), kind
