"""Screen network designs on one task and schedule: which reads captchas best per CPU-minute.

Every design trains from scratch on alphanumeric captchas (digits + A-Z, 1-4, 160x64) rendered on
the fly from the same seed, with the same recipe (Adam 1e-3, warm-up 100, cosine over ``--steps``,
batch 64), until ``--steps`` or ``--minutes`` of training, whichever comes first. Every
``--eval_every`` steps it reads ``--eval_images`` held-out captchas (rendered once, from a seed
the stream never draws; evaluation time is not training time). At the end it times inference
(images/s at batch 64). One JSON line per design goes to ``--out``: its curve (step, training
seconds, accuracy, CER), s/step, images/s, parameters. A design is a name from DESIGNS, or
``name=key:value,...`` with Config fields::

    python research/screen_networks.py --designs crnn_light --out docs/network_screen.jsonl
    python research/screen_networks.py --designs "wide=network:crnn,crnn_channels:32;64;128;192"

Run one design per process (one command per design, in turn): each starts clean.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench.common import cpu_name  # noqa: E402
from src.cli import report_error  # noqa: E402
from src.config import CONFIG_FIELDS, Config, _coerce, validate  # noqa: E402

ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CRNN_LIGHT = {"network": "crnn", "crnn_channels": "16,32,64,128", "crnn_convs_per_stage": 1, "crnn_width_stride": 4,
              "crnn_batch_norm": True, "crnn_hidden_size": 128, "crnn_bidirectional": True}
# Each varies one axis of crnn_light (or is the original family).
DESIGNS: Dict[str, Dict[str, object]] = {
    "crnn_light": CRNN_LIGHT,
    "crnn_no_bn": {**CRNN_LIGHT, "crnn_batch_norm": False},
    "crnn_lstm": {**CRNN_LIGHT, "crnn_bidirectional": False},
    "crnn_stride2": {**CRNN_LIGHT, "crnn_width_stride": 2},
    "crnn_wide": {**CRNN_LIGHT, "crnn_channels": "32,64,128,192"},
    "crnn_deep": {**CRNN_LIGHT, "crnn_convs_per_stage": 2},
    "crnn_3stage": {**CRNN_LIGHT, "crnn_channels": "32,64,128"},
    "warpctc": {"network": "warpctc"},
    "warpctc_bilstm": {"network": "warpctc", "bidirectional": True},
    "crnn_lr3e-3": {**CRNN_LIGHT, "learning_rate": 0.003},
}


def parse_design(text: str):
    """``name`` of DESIGNS, or ``name=key:value,...`` (``;`` for commas inside a value)."""
    if "=" not in text:
        if text not in DESIGNS:
            raise ValueError(f"--designs: unknown design {text!r}; known: {', '.join(DESIGNS)}")
        return text, DESIGNS[text]
    name, spec = text.split("=", 1)
    fields = {}
    for item in spec.split(","):
        key, _, value = item.partition(":")
        if key not in CONFIG_FIELDS:
            raise ValueError(f"--designs {name}: {key!r} is not a config field")
        fields[key] = _coerce(key, value.replace(";", ","), f"--designs {name}")
    return name, fields


def run_design(name: str, fields: Dict[str, object], args) -> Dict[str, object]:
    import mindspore as ms
    import numpy as np

    import process_data
    from src.captcha_spec import CaptchaSpec
    from src.dataset import create_dataset, load_batches
    from src.metric import WarpCTCAccuracy, WarpCTCCharErrorRate
    from src.run.runtime import set_up
    from src.warpctc_for_train import build_train_cell

    recipe = dict(charset=ALNUM, seed=args.seed, optimizer="adam", learning_rate=args.learning_rate,
                  lr_schedule="cosine", warmup_steps=100, train_steps=args.steps, synthetic_images=args.steps * 64,
                  batch_size=64)
    cfg = validate(dataclasses.replace(Config(), **{**recipe, **fields}))       # a design may change the recipe
    spec = CaptchaSpec.from_config(cfg)
    set_up("CPU")
    ms.set_seed(cfg.seed)
    with tempfile.TemporaryDirectory(prefix="screen_") as scratch:
        held_out = os.path.join(scratch, "test")
        process_data.render_split(held_out, args.eval_images, spec=spec, seed=args.eval_seed, split="test",
                                  workers=1, progress=False)
        batches, _ = load_batches(held_out, cfg, spec)
    dataset = create_dataset(None, cfg, spec, training=True)
    net, train_cell, _ = build_train_cell(cfg, "CPU", dataset.get_dataset_size())

    def evaluate():
        net.set_train(False)
        accuracy, cer = WarpCTCAccuracy(spec), WarpCTCCharErrorRate(spec)
        for image, label in batches:
            logits = net(image).asnumpy()
            accuracy.update(logits, label)
            cer.update(logits, label)
        net.set_train(True)
        return accuracy.eval(), cer.eval()

    curve, seconds, step, step_times = [], 0.0, 0, []
    for image, label in dataset.create_tuple_iterator():
        start = time.perf_counter()
        loss = float(train_cell(image, label).asnumpy())        # read back: the step is done
        elapsed = time.perf_counter() - start
        step += 1
        seconds += elapsed
        if step > 1:                                           # the first step compiles the graph
            step_times.append(elapsed)
        last = step >= args.steps or seconds >= args.minutes * 60
        if step % args.eval_every == 0 or last:
            accuracy, cer = evaluate()
            curve.append({"step": step, "train_seconds": round(seconds, 1), "loss": round(loss, 4),
                          "accuracy": round(accuracy, 4), "cer": round(cer, 4)})
            print(f"{name}: step {step}, {seconds / 60:.1f} min, loss {loss:.3f}, accuracy {accuracy:.4f}, "
                  f"CER {cer:.4f}", flush=True)
        if last:
            break
    net.set_train(False)
    image = batches[0][0]
    net(image).asnumpy()                                       # compile the inference graph
    start, rounds = time.perf_counter(), 0
    while time.perf_counter() - start < 10 or rounds < 3:
        net(image).asnumpy()
        rounds += 1
    images_per_s = rounds * image.shape[0] / (time.perf_counter() - start)
    return {"design": name, "fields": fields, "steps_planned": args.steps, "minutes_cap": args.minutes,
            "s_per_step": round(float(np.median(step_times)), 4), "inference_images_per_s": round(images_per_s, 1),
            "parameters": int(sum(p.size for p in net.trainable_params())), "ctc_steps": net.sequence_length,
            "curve": curve, "cpu": cpu_name(), "cores": os.cpu_count()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--designs", required=True,
                        help="designs separated by '+': names of DESIGNS, or name=key:value,...")
    parser.add_argument("--steps", type=int, default=1500, help="the schedule's length (default 1500)")
    parser.add_argument("--minutes", type=float, default=9.0, help="stop a design after this much training (default 9)")
    parser.add_argument("--eval_every", type=int, default=250)
    parser.add_argument("--eval_images", type=int, default=1000)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=11, help="the training stream's seed (default 11)")
    parser.add_argument("--eval_seed", type=int, default=20261201, help="the held-out captchas' seed")
    parser.add_argument("--out", default=None, help="JSON lines file to append each design's row to")
    args = parser.parse_args(argv)
    try:
        designs = [parse_design(text) for text in args.designs.split("+")]
        rows: List[Dict[str, object]] = []
        for name, fields in designs:
            row = run_design(name, fields, args)
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
    except ValueError as err:
        return report_error("screen_networks.py", err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
