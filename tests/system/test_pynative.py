"""PyNative mode, MindSpore's default: the network, the hub entry and predict's decoding.

numpy 2.x once broke every op run outside graph mode while graph mode kept working, so these
run in a fresh interpreter that never calls ``set_context`` (other test modules switch this
process to graph mode), and compare with graph mode in the same interpreter afterwards.
"""
import json
import os

import pytest

import process_data
from conftest import REPO, run_py

RELEASED = os.path.join(REPO, "pretrained", "warpctc.ckpt")
IMAGES = 16

# Runs the same inputs in PyNative mode first, then in graph mode; prints one JSON line.
SCRIPT = '''
import json, sys
import numpy as np
import mindspore as ms
import mindspore_hub_conf
import predict
from src.captcha_spec import CaptchaSpec
from src.config import Config
from src.dataset import create_predict_dataset

checkpoint, folder = sys.argv[1:3]
default_mode = ms.get_context("mode")
paths = predict.collect_images([folder])
(x, _), = create_predict_dataset(paths, Config(batch_size=len(paths)), CaptchaSpec()).create_tuple_iterator()
released = mindspore_hub_conf.create_network("warpctc", checkpoint_path=checkpoint)
ms.set_seed(5)
untrained = mindspore_hub_conf.create_network("warpctc", hidden_size=32)


def run():
    reads = predict.predict(paths, checkpoint, Config(batch_size=6), quiet=True)
    return {"released": released(x).asnumpy(), "untrained": untrained(x).asnumpy(),
            "texts": [r.text for r in reads], "confidences": [r.confidence for r in reads]}


pynative = run()
ms.set_context(mode=ms.GRAPH_MODE)
graph = run()
print(json.dumps({
    "default_mode_is_pynative": default_mode == ms.PYNATIVE_MODE,
    "released_max_diff": float(np.abs(pynative["released"] - graph["released"]).max()),
    "untrained_max_diff": float(np.abs(pynative["untrained"] - graph["untrained"]).max()),
    "untrained_scale": float(np.abs(graph["untrained"]).max()),
    "texts": [pynative["texts"], graph["texts"]],
    "confidences": [pynative["confidences"], graph["confidences"]],
    "names": [p.rsplit("/", 1)[-1] for p in paths],
}))
'''


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    work = tmp_path_factory.mktemp("pynative")
    process_data.render_split(str(work / "images"), IMAGES, seed=100, split="test", workers=1, progress=False)
    (work / "run_modes.py").write_text(SCRIPT)
    proc = run_py([work / "run_modes.py", RELEASED, work / "images"], cwd=work)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_fresh_interpreter_starts_in_pynative_mode(outcome):
    assert outcome["default_mode_is_pynative"]


def test_network_and_hub_entry_give_graph_mode_outputs(outcome):
    assert outcome["released_max_diff"] < 1e-4
    assert outcome["untrained_scale"] > 0 and outcome["untrained_max_diff"] < 1e-5


def test_predict_decodes_the_same_in_both_modes(outcome):
    pynative_texts, graph_texts = outcome["texts"]
    assert pynative_texts == graph_texts
    assert outcome["confidences"][0] == pytest.approx(outcome["confidences"][1], abs=1e-5)
    labels = [name.split("-", 1)[1][:-len(".png")] for name in outcome["names"]]
    # a reading model, not an all-blank output: of these 16 only 08-734.png is misread (measured once)
    assert [text for text, label in zip(pynative_texts, labels) if text != label] == ["754"]
