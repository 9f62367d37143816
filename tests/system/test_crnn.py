"""The convolutional family (``--network crnn``) through every entry point, on a tiny real training:
checkpoints that say what they are, an exact resume, fine-tuning to another alphabet, export to
ONNX and MINDIR, the hub entry in PyNative mode, and one-line errors for the other family's options."""
import json
import os
import re
import shutil

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn
from PIL import Image

import mindspore_hub_conf
from src.captcha_spec import SPEC_KEY, CaptchaSpec
from src.checkpoint.files import read_checkpoint
from src.checkpoint.model import load_network, model_record
from src.config import Config
from src.checkpoint.model import HIDDEN_KEY, NETWORK_KEY
from src.models import architecture, create_network
from conftest import REPO, last_error_line, run_py

TRAIN, PREDICT, EXPORT = (os.path.join(REPO, name) for name in ("train.py", "predict.py", "export.py"))
CRNN = ["--network", "crnn", "--crnn_channels", "8,16,16,16", "--crnn_hidden_size", "16", "--batch_size", "16"]
LOSS_LINE = re.compile(r"epoch: (\d+) step: (\d+), loss is ([0-9.eE+-]+)")
LR_LINE = re.compile(r"step (\d+) of \d+: [0-9.]+ s/step, lr ([0-9.eE+-]+)")


@pytest.fixture(scope="module", autouse=True)
def keep_cpu_isa():
    """Building a crnn in this process caps oneDNN's instruction set (src/network.py); the cap must not
    reach the later tests' subprocesses."""
    before = os.environ.get("ONEDNN_MAX_CPU_ISA")
    yield
    if before is None:
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    else:
        os.environ["ONEDNN_MAX_CPU_ISA"] = before


@pytest.fixture(scope="module")
def crnn_run(data_root, tmp_path_factory):
    """2 epochs x 10 steps of a tiny crnn (Adam, warm-up, cosine), a checkpoint every 4 steps."""
    work = tmp_path_factory.mktemp("crnn")
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *CRNN, "--epoch_size", "2", "--optimizer", "adam",
                   "--learning_rate", "0.003", "--lr_schedule", "cosine", "--warmup_steps", "3",
                   "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "10"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return work, proc.stdout


def losses(stdout):
    return [(int(e), int(s), float(v)) for e, s, v in LOSS_LINE.findall(stdout)]


def test_a_crnn_checkpoint_records_its_network_and_the_original_records_what_it_always_did(crnn_run):
    work, stdout = crnn_run
    assert len(losses(stdout)) == 20
    params = read_checkpoint(str(work / "checkpoint" / "crnn-2_10.ckpt"))
    record = json.loads(str(params[NETWORK_KEY]))
    assert record == {"network": "crnn", "crnn_channels": "8,16,16,16", "crnn_convs_per_stage": 1,
                      "crnn_width_stride": 4, "crnn_batch_norm": True, "crnn_hidden_size": 16,
                      "crnn_bidirectional": True}
    assert HIDDEN_KEY not in params and any(name.startswith("backbone.") for name in params)
    # The original network's checkpoints keep exactly the entries they always had.
    default = Config()
    assert set(model_record(CaptchaSpec.from_config(default), architecture(default))) == {SPEC_KEY, HIDDEN_KEY}


def test_a_crnn_training_resumes_exactly(crnn_run, data_root, tmp_path):
    work, reference = crnn_run
    # From a folder, under the name every run used before checkpoints were named by the network.
    resume_from = tmp_path / "earlier"
    resume_from.mkdir()
    shutil.copy(work / "checkpoint" / "crnn-1_8.ckpt", resume_from / "warpctc-1_8.ckpt")
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *CRNN, "--epoch_size", "2", "--optimizer", "adam",
                   "--learning_rate", "0.003", "--lr_schedule", "cosine", "--warmup_steps", "3",
                   "--save_checkpoint_steps", "4", "--keep_checkpoint_max", "10", "--resume_checkpoint", resume_from,
                   "--save_checkpoint_path", tmp_path / "resumed"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"resuming from {resume_from / 'warpctc-1_8.ckpt'} at step 8" in proc.stdout
    resumed, expected = losses(proc.stdout), losses(reference)[8:]
    assert [(e, s) for e, s, _ in resumed] == [(e, s) for e, s, _ in expected]
    np.testing.assert_allclose([v for *_, v in resumed], [v for *_, v in expected], rtol=1e-4)
    # The learning rate the optimizer used at the last step is the uninterrupted run's.
    assert LR_LINE.findall(proc.stdout)[-1] == LR_LINE.findall(reference)[-1]


def test_eval_predict_export_and_the_hub_need_only_the_checkpoint(crnn_run, data_root, tmp_path):
    work, _ = crnn_run
    ckpt = str(work / "checkpoint" / "crnn-2_10.ckpt")
    images = sorted(str(data_root / "test" / n) for n in os.listdir(data_root / "test") if n.endswith(".png"))[:8]
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, "--quiet", *images])
    assert proc.returncode == 0, proc.stderr[-2000:]
    predicted = [line.split("\t")[1] for line in proc.stdout.splitlines()]
    assert len(predicted) == 8
    proc = run_py([os.path.join(REPO, "eval.py"), "--dataset_path", data_root / "test", "--checkpoint_path", ckpt,
                   "--quiet"])
    assert proc.returncode == 0 and "evaluated 64 images" in proc.stdout, proc.stderr[-2000:]

    # ONNX, decoded by someone without MindSpore, with only the JSON written beside it.
    ort = pytest.importorskip("onnxruntime")
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "crnn", "--file_format", "ONNX",
                   "--export_batch_size", "8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads((tmp_path / "crnn.onnx.json").read_text(encoding="utf-8"))
    assert info["network"]["network"] == "crnn" and info["output"]["shape"] == [40, 8, 11]
    order = {"BGR": [2, 1, 0], "RGB": [0, 1, 2]}[info["input"]["channel_order"]]

    def prepare(path):
        with Image.open(path) as handle:
            rgb = np.asarray(handle.convert("RGB"), dtype=np.float64)[:, :, order]
        x = (rgb * info["input"]["rescale"] - np.array(info["input"]["mean"])) / np.array(info["input"]["std"])
        return x.transpose(2, 0, 1).astype(np.float32)

    batch = np.stack([prepare(p) for p in images])
    session = ort.InferenceSession(str(tmp_path / "crnn.onnx"))
    (out,) = session.run(None, {session.get_inputs()[0].name: batch})
    texts = []
    for seq in out.argmax(-1).T:
        kept = [c for i, c in enumerate(seq) if c != info["blank_index"] and (i == 0 or c != seq[i - 1])]
        texts.append("".join(info["charset"][c] for c in kept))
    assert texts == predicted

    # MINDIR, and the hub entry: the checkpoint network's outputs.
    net, _ = load_network(ckpt, Config())
    expected = net(ms.Tensor(batch)).asnumpy()
    proc = run_py([EXPORT, "--checkpoint_path", ckpt, "--file_name", tmp_path / "crnn", "--export_batch_size", "8"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    graph = nn.GraphCell(ms.load(str(tmp_path / "crnn.mindir")))
    np.testing.assert_allclose(graph(ms.Tensor(batch)).asnumpy(), expected, atol=1e-4)
    np.testing.assert_allclose(out, expected, atol=1e-4)
    hub = mindspore_hub_conf.create_network("crnn", checkpoint_path=ckpt)
    assert hub.sequence_length == 40 and hub.architecture["crnn_channels"] == "8,16,16,16"
    np.testing.assert_allclose(hub(ms.Tensor(batch)).asnumpy(), expected, atol=1e-5)


PYNATIVE = '''
import json, sys
import numpy as np
import mindspore as ms
import mindspore_hub_conf

checkpoint = sys.argv[1]
x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 160)).astype(np.float32))
pynative_mode = ms.get_context("mode") == ms.PYNATIVE_MODE
net = mindspore_hub_conf.create_network("warpctc", network="crnn", checkpoint_path=checkpoint)
fresh = mindspore_hub_conf.create_network("crnn", crnn_channels="8,8", crnn_hidden_size=8, crnn_width_stride=2)
pynative = net(x).asnumpy(), fresh(x).asnumpy()
ms.set_context(mode=ms.GRAPH_MODE)
graph = net(x).asnumpy(), fresh(x).asnumpy()
print(json.dumps({"pynative": pynative_mode, "shapes": [list(pynative[0].shape), list(pynative[1].shape)],
                  "diff": max(float(np.abs(a - b).max()) for a, b in zip(pynative, graph))}))
'''


def test_the_hub_builds_crnn_in_pynative_mode_as_in_graph_mode(crnn_run, tmp_path):
    work, _ = crnn_run
    script = tmp_path / "pynative.py"
    script.write_text(PYNATIVE)
    proc = run_py([script, work / "checkpoint" / "crnn-2_10.ckpt"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["pynative"] and result["shapes"] == [[40, 2, 11], [80, 2, 11]]
    assert result["diff"] < 1e-4


@pytest.mark.parametrize("fresh_head", [False, True])
def test_fine_tuning_a_crnn_to_another_alphabet_keeps_the_shared_head_rows(crnn_run, data_root, tmp_path, fresh_head):
    work, _ = crnn_run
    ckpt = work / "checkpoint" / "crnn-2_10.ckpt"
    labelled = tmp_path / "hex"
    shutil.copytree(data_root / "train", labelled)       # digits are letters of the bigger alphabet too
    proc = run_py([TRAIN, "--dataset_path", labelled, *CRNN, "--charset", "0123456789ABCDEF", "--train_steps", "1",
                   "--learning_rate", "1e-12", "--momentum", "0", "--init_checkpoint", ckpt,
                   "--fresh_head", str(fresh_head).lower()], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if fresh_head:
        assert (f"crnn weights but the dense head from {ckpt} (alphabet '0123456789'); the head for this alphabet "
                "'0123456789ABCDEF' (17 classes) starts fresh (--fresh_head)") in proc.stdout
    else:
        assert (f"crnn weights from {ckpt}, and of its dense head (alphabet '0123456789') the rows of the blank and "
                "of the 10 character(s) this alphabet '0123456789ABCDEF' shares with it; 6 character(s) start fresh "
                "('ABCDEF')") in proc.stdout
    source = read_checkpoint(str(ckpt))
    tuned = read_checkpoint(str(tmp_path / "checkpoint" / "crnn-1_1.ckpt"))
    assert tuple(tuned["fc.weight"].shape) == (17, 32)
    old, new = source["fc.weight"].asnumpy(), tuned["fc.weight"].asnumpy()
    # new row -> source row: the digits by character, and the blank (the last class of each)
    kept = {} if fresh_head else {**{i: i for i in range(10)}, 16: 10}
    for name in ("fc.weight", "fc.bias"):
        for new_row, old_row in kept.items():
            np.testing.assert_allclose(tuned[name].asnumpy()[new_row], source[name].asnumpy()[old_row], atol=1e-6,
                                       err_msg=f"{name} row {new_row}")
    # every other row is drawn fresh: none is a copy of a trained row
    assert all(not np.allclose(new[i], row) for i in range(17) if i not in kept for row in old)
    carried = [name for name in source if name.startswith(("backbone.", "neck.")) and "moving_" not in name
               and name in tuned]
    assert len(carried) >= 10
    for name in carried:
        np.testing.assert_allclose(tuned[name].asnumpy(), source[name].asnumpy(), atol=1e-6)


@pytest.mark.parametrize("option, message", [
    (["--network", "warpctc"], "--network 'warpctc' conflicts with the checkpoint's 'crnn'"),
    (["--hidden_size", "64"], "--hidden_size is not an option of its network, crnn"),
    (["--crnn_width_stride", "2"], "--crnn_width_stride 2 conflicts with the checkpoint's 4"),
])
def test_the_other_networks_options_with_a_checkpoint_are_one_line(crnn_run, data_root, option, message):
    work, _ = crnn_run
    ckpt = work / "checkpoint" / "crnn-2_10.ckpt"
    proc = run_py([PREDICT, "--checkpoint_path", ckpt, *option, data_root / "test"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    assert last_error_line(proc) == f"predict.py: error: checkpoint {ckpt}: {message}; drop the option: the checkpoint says what it reads"


@pytest.mark.parametrize("option, message", [
    (["--network", "warpctc"], "its crnn network cannot start this warpctc network (network differs: 'crnn' vs "
                               "--network 'warpctc')"),
    (["--hidden_size", "16"], "--hidden_size is not an option of its network, crnn; drop the option, or give "
                              "--network to start another network from its weights"),
])
def test_a_crnn_checkpoint_cannot_start_the_original_network(crnn_run, data_root, tmp_path, option, message):
    work, _ = crnn_run
    ckpt = work / "checkpoint" / "crnn-2_10.ckpt"
    proc = run_py([TRAIN, "--dataset_path", data_root / "train", *option, "--batch_size", "16",
                   "--init_checkpoint", ckpt], cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert last_error_line(proc) == f"train.py: error: checkpoint {ckpt}: {message}"
    assert not (tmp_path / "checkpoint").exists()


def test_the_factory_says_how_many_steps_each_network_emits():
    x = ms.Tensor(np.zeros((2, 3, 64, 160), np.float32))
    for cfg, steps in ((Config(hidden_size=8), 160), (Config(hidden_size=8, bidirectional=True), 160),
                       (Config(network="crnn", crnn_channels="4,4,4", crnn_hidden_size=8, crnn_width_stride=2), 80),
                       (Config(network="crnn", crnn_channels="4,4,4,4", crnn_hidden_size=8, crnn_bidirectional=False,
                               crnn_batch_norm=False, crnn_convs_per_stage=2), 40)):
        net = create_network(cfg)
        assert net.sequence_length == steps and net(x).shape == (steps, 2, 11)


@pytest.mark.parametrize("record, reason", [
    ('{"network": "rnn"}', "unknown network 'rnn'"),
    ('{"network": "crnn", "crnn_channels": "8,8"}', "'crnn_convs_per_stage'"),
    (json.dumps({**architecture(Config(network="crnn")), "crnn_width_stride": 4.0}),
     "'crnn_width_stride' must be int, got 4.0"),
    ("not json", "Expecting value"),
])
def test_a_damaged_network_record_is_one_line_naming_the_checkpoint(record, reason):
    from src.checkpoint.model import stored_architecture

    with pytest.raises(ValueError, match=r"^checkpoint x\.ckpt: damaged network record \(.*" + re.escape(reason)):
        stored_architecture("checkpoint x.ckpt", {NETWORK_KEY: record})
