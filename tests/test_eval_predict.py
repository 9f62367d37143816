"""eval.py, predict.py, export.py, run_eval.sh and the hub entry on a checkpoint trained in the test."""
import os
import shutil

import numpy as np
import mindspore as ms
import pytest
from mindspore import nn
from PIL import Image

import mindspore_hub_conf
from src.checkpoint import load_network
from src.config import Config
from src.dataset import MEAN, STD, list_samples
from src.metric import greedy_decode, summarize
from conftest import REPO, last_error_line, run_bash, run_py

EVAL, PREDICT, EXPORT = (os.path.join(REPO, n) for n in ("eval.py", "predict.py", "export.py"))


@pytest.fixture(scope="module")
def ckpt(trained):
    return trained[0] / "checkpoint" / "warpctc-3_10.ckpt"


def reference_inputs(paths):
    """Preprocessing written independently of src.dataset: RGB->BGR, /255, normalise, CHW."""
    images = []
    for path in paths:
        with Image.open(path) as handle:
            rgb = np.asarray(handle.convert("RGB"), dtype=np.float32)
        images.append(((rgb[:, :, ::-1] / 255.0 - np.array(MEAN)) / np.array(STD)).transpose(2, 0, 1))
    return ms.Tensor(np.stack(images).astype(np.float32))


def independent_decode(logits):
    out = []
    for seq in np.asarray(logits).argmax(-1).T:
        digits, prev = [], None
        for c in seq:
            if c != prev and c != 10:
                digits.append(str(c))
            prev = c
        out.append("".join(digits))
    return out


def parse_result(stdout):
    line = next(l for l in stdout.splitlines() if l.startswith("result: "))
    return eval(line[len("result: "):], {})   # the original's printed dict


@pytest.fixture(scope="module")
def reference(data_root, ckpt):
    ms.set_context(mode=ms.GRAPH_MODE)
    samples = list_samples(str(data_root / "test"))
    net = load_network(str(ckpt), Config())     # hidden size (32) read from the checkpoint
    logits = net(reference_inputs([p for p, _ in samples])).asnumpy()
    return samples, logits


def test_eval_prints_metrics_equal_to_an_independent_decode(data_root, ckpt, reference, tmp_path):
    samples, logits = reference
    proc = run_py([EVAL, "--dataset_path", data_root / "test", "--checkpoint_path", ckpt, "--batch_size", "24"],
                  cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = parse_result(proc.stdout)
    assert set(result) == {"WarpCTCAccuracy", "CER"}
    assert 0.0 <= result["WarpCTCAccuracy"] <= 1.0
    expected = summarize(independent_decode(logits), [label for _, label in samples])
    assert result["WarpCTCAccuracy"] == pytest.approx(expected["WarpCTCAccuracy"])
    assert result["CER"] == pytest.approx(expected["CER"])
    assert "evaluated 64 images" in proc.stdout          # 24+24+16: the last partial batch counts


def test_predict_agrees_with_eval_and_ignores_file_names(data_root, ckpt, reference, tmp_path):
    samples, logits = reference
    unlabeled = tmp_path / "unlabeled"
    unlabeled.mkdir()
    for i, (path, _) in enumerate(samples):
        shutil.copy(path, unlabeled / f"img{i:03d}.png")
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, unlabeled, "--batch_size", "20"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [l.split("\t") for l in proc.stdout.splitlines()]
    assert [os.path.basename(p) for p, _ in lines] == [f"img{i:03d}.png" for i in range(len(samples))]
    assert [d for _, d in lines] == independent_decode(logits) == greedy_decode(logits)


def test_hub_network_loads_checkpoint_and_matches_eval_network(data_root, ckpt, reference):
    samples, logits = reference
    net = mindspore_hub_conf.create_network("warpctc", checkpoint_path=str(ckpt))
    out = net(reference_inputs([p for p, _ in samples[:8]])).asnumpy()
    np.testing.assert_allclose(out, logits[:, :8], rtol=1e-5, atol=1e-5)
    bare = mindspore_hub_conf.create_network("warpctc", hidden_size=32)
    assert bare.fc.weight.shape == (11, 32)
    with pytest.raises(NotImplementedError, match="resnet"):
        mindspore_hub_conf.create_network("resnet")


def test_exported_mindir_and_onnx_give_checkpoint_outputs(data_root, ckpt, reference, tmp_path):
    samples, logits = reference
    x = reference_inputs([p for p, _ in samples[:2]])
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
    samples, logits = reference
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "release", "--file_format", "CKPT"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    released = tmp_path / "release.ckpt"
    assert released.stat().st_size < 0.6 * ckpt.stat().st_size          # no optimizer state
    assert "accum.fc.weight" not in ms.load_checkpoint(str(released))
    net = mindspore_hub_conf.create_network("warpctc", checkpoint_path=str(released))
    out = net(reference_inputs([p for p, _ in samples[:4]])).asnumpy()
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
        path, expected, extra = ckpt, "was saved from a network of another shape", ["--hidden_size", "48"]
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
    assert proc.returncode == 2 and "another shape" in proc.stdout
